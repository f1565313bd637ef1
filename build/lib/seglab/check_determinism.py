"""`python -m seglab.check_determinism`: the command's name; it lives in `seglab.cli.check_determinism`."""

from seglab.cli.check_determinism import cli

if __name__ == "__main__":
    cli()
