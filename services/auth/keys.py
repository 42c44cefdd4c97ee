from aiohttp import web

from services.auth.passwords import PasswordHasher

HASHER = web.AppKey("password_hasher", PasswordHasher)
