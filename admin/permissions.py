"""`GET /v1/permissions`: the permissions the operator's route table defines.

Every member may read it (the page and integrations show which permissions a key can
carry); it is the same for every account, since the route table is the deployment's.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.config import Config
from gateway.routes import compile_routes

from .state import CONFIG


def permission_list(config: Config) -> list[dict[str, Any]]:
    routes = compile_routes(config.routes, config.permissions)
    return [
        {
            "name": name,
            "description": description,
            "resource": name.partition(":")[0],
            "action": name.partition(":")[2],
            "routes": [
                {
                    "methods": ["*"] if route.methods is None else sorted(route.methods),
                    "path": route.path,
                }
                for route in routes
                if route.permission == name
            ],
        }
        for name, description in config.permissions.items()
    ]


async def list_permissions(request: web.Request) -> web.Response:
    return web.json_response({"items": permission_list(request.app[CONFIG])})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/permissions", list_permissions, allow_head=False)
