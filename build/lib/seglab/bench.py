"""`python -m seglab.bench`: the command's name; it lives in `seglab.cli.bench`."""

from seglab.cli.bench import cli

if __name__ == "__main__":
    cli()
