"""`python -m seglab.models`: the command's name; it lives in `seglab.cli.models` (commands belong in cli/)."""

from seglab.cli.models import cli

if __name__ == "__main__":
    cli()
