"""Run the shim: `python -m api_shim` (the container's command; Cloud Run sets $PORT)."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import uvicorn

from api_shim.app import create_app
from api_shim.observability import configure_logging
from dyff.config import load_settings
from dyff.errors import ConfigError
from dyff.stores import open_blobs, open_records


def main() -> int:
    configure_logging()
    try:
        settings = load_settings()
        records, blobs = open_records(settings.records), open_blobs(settings.blobs)
    except ConfigError as exc:
        print(f"dyff shim: {exc}", file=sys.stderr)
        return 2
    app = create_app(
        records,
        blobs,
        public_url=settings.public_url,
        cache_dir=settings.data_dir / "cache",
        upload_ttl=timedelta(seconds=settings.upload_ttl_seconds),
    )
    port = int(os.environ.get("PORT", "8080"))
    uvicorn.run(
        app,
        host=os.environ.get("HOST", "0.0.0.0"),
        port=port,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips="*",
        # SIGTERM: stop accepting, let requests in flight finish, exit within the grace.
        timeout_graceful_shutdown=settings.drain_seconds,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
