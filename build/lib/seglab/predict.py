"""`python -m seglab.predict`: the command's name; it lives in `seglab.cli.predict`."""

from seglab.cli.predict import cli

if __name__ == "__main__":
    cli()
