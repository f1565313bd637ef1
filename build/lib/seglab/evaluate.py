"""`python -m seglab.evaluate`: the command's name; it lives in `seglab.cli.evaluate`."""

from seglab.cli.evaluate import cli

if __name__ == "__main__":
    cli()
