"""`python -m seglab.export`: the command's name; it lives in `seglab.cli.export`."""

from seglab.cli.export import cli

if __name__ == "__main__":
    cli()
