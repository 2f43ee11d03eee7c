"""``python -m skinlesion`` (also how DDP child processes re-run the command)."""

from skinlesion.cli.main import app

if __name__ == "__main__":
    app()
