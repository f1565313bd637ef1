"""`python -m seglab.report`: the command's name; it lives in `seglab.cli.report`."""

from seglab.cli.report import cli

if __name__ == "__main__":
    cli()
