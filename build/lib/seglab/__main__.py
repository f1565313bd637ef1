"""`python -m seglab`: the training command (`seglab.cli.train`)."""

from seglab.cli.train import cli

if __name__ == "__main__":
    cli()
