"""Typed keys for what the admin application holds (shared by its modules)."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from gateway.config import Config
from gateway.keyformat import Hasher
from gateway.keys import KeyStore

CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("pool", asyncpg.Pool)
HASHER = web.AppKey("hasher", Hasher)
STORE = web.AppKey("key_store", KeyStore)
