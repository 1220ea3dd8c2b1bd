"""The TokenLens web UI: a read-only HTTP API over a results URL (`ui.http_api`), the command that serves it with the
built web app (`ui.server`), and the React app itself (`ui/web`)."""
