"""`tokenlens ui`: serve the read-only API and the built web app over a results URL with uvicorn."""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path

import click

from storage_backends import LocalStorage, Storage, open_storage
from tokenlens.cli_options import results_option
from tokenlens.errors import TokenLensError
from tokenlens.settings import Settings

#: Where `npm run build` in ui/web puts the app (shipped as package data in a wheel).
DIST_DIR = Path(__file__).parent / "web" / "dist"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


class UIStartError(TokenLensError):
    """The UI can't start: nothing to serve at the results URL, or the address is taken."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_results(results_url: str) -> Storage:
    """Open the results URL for reading, failing early with a message that says what to do."""
    storage = open_storage(results_url)
    if isinstance(storage, LocalStorage):
        if not storage.root.is_dir():
            raise UIStartError(
                f"results directory {storage.root} does not exist; make a run first "
                "(`tokenlens run examples/prompts.jsonl`) or pass --results DIR_OR_S3_URL"
            )
    else:
        storage.check()
    return storage


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UIStartError(f"port {port} on {host} is already in use; pass --port with a free port") from None
            raise UIStartError(f"can't listen on {host}:{port}: {exc.strerror}; check --host and --port") from None


@click.command("ui")
@results_option()
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535), help="Port.")
def ui_command(results_url: str | None, host: str, port: int) -> None:
    """Serve the read-only web UI over a results URL.

    \b
    Browse runs, search prompts, and see which input tokens drove each output token:
      tokenlens ui --results ./results
      tokenlens ui --results s3://bucket/prefix     (AWS_* variables as for the workers)
    """
    import uvicorn

    from ui.http_api import LOOPBACK_HOSTS, create_app

    settings = Settings.from_env(results_url=results_url)
    storage = open_results(settings.results_url)
    check_port_free(host, port)
    loopback = is_loopback(host)
    app = create_app(storage, dist_dir=DIST_DIR, allowed_hosts=LOOPBACK_HOSTS if loopback else None)
    if not (DIST_DIR / "index.html").is_file():
        click.secho(
            f"warning: the web app is not built ({DIST_DIR} is missing); serving the API only. "
            "Build it with: cd ui/web && npm ci && npm run build",
            fg="yellow",
            err=True,
        )
    if not loopback:
        click.secho(
            f"warning: listening on {host}: anyone who can reach this address can read every result "
            f"under {storage.url} (there is no login); put it behind an authenticating proxy",
            fg="yellow",
            err=True,
        )
    shown_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    click.echo(f"TokenLens UI for {storage.url} at http://{shown_host}:{port}/  (Ctrl+C to stop)")
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning", server_header=False)
