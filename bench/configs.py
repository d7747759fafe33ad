"""The nginx and Caddy configurations the bench runs its daemons with.

nginx as a plain pass-through proxy (the C reference), nginx around the shipped
deploy/nginx/ snippets asking a gateway's `/_gateway/verify` (also what the ingress tests
run, tests/test_ingress_daemons.py), and Caddy as a plain reverse proxy; the Caddy with
verify runs deploy/caddy/Caddyfile as shipped, its addresses from the environment.
"""

from __future__ import annotations

from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

# What each nginx here starts with: one worker in the foreground, its files under {home},
# and the opening of its http block.
_NGINX_HTTP = """\
worker_processes 1;
daemon off;
pid {home}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {home}/body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
"""

NGINX_CONF = (
    _NGINX_HTTP
    + """\
    upstream api {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
)


NGINX_VERIFY_CONF = (
    _NGINX_HTTP
    + """\
    upstream growpanel_gateway {{ server {gateway}; keepalive 64; }}
    upstream growpanel_api {{ server {upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        include {deploy}/nginx/growpanel-verify.conf;
        location / {{
            include {deploy}/nginx/growpanel-protect.conf;
            proxy_pass http://growpanel_api;
        }}
    }}
}}
"""
)


def nginx_verify_conf(home: Path, port: int, gateway: str, upstream: str) -> str:
    """nginx.conf for a server on 127.0.0.1:`port` that includes deploy/nginx/ as shipped,
    asking the gateway at `gateway` ("host:port") and proxying to `upstream` ("host:port");
    the bench and the ingress tests both run nginx from this one file."""
    return NGINX_VERIFY_CONF.format(
        home=home, port=port, gateway=gateway, upstream=upstream, deploy=DEPLOY
    )


CADDY_CONF = """\
{{
    admin off
}}
http://127.0.0.1:{port} {{
    reverse_proxy {upstream}
}}
"""
