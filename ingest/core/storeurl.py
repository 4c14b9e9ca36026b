"""The contract's store URL forms, parsed without importing any store."""

from __future__ import annotations


class StoreURLError(ValueError):
    pass


def parse_store_url(url: str) -> tuple[str, str]:
    """Returns (kind, target): ('sqlite', path) | ('firestore', project or '') | ('none', '')."""
    url = url.strip()
    if url in ("none", "null", "no-persist"):
        return "none", ""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        if not path:
            raise StoreURLError(f"store URL {url!r} names no file: use sqlite:///relative.db or sqlite:////abs.db")
        return "sqlite", path  # 'sqlite:////abs' leaves '/abs'; 'sqlite:///rel' leaves 'rel'
    if url == "firestore":
        return "firestore", ""
    if url.startswith("firestore?"):
        return "firestore", ""
    if url.startswith("firestore://"):
        return "firestore", url[len("firestore://"):].split("?", 1)[0].strip("/")
    raise StoreURLError(
        f"unknown store URL {url!r}: expected sqlite:///path.db, sqlite:////abs/path.db, firestore or firestore://PROJECT"
    )


def store_identity(url: str, env=None) -> str:
    """What a journal is bound to: the same data, however the URL was spelled (no options, no secrets)."""
    import os
    from pathlib import Path

    env = os.environ if env is None else env
    kind, target = parse_store_url(url)
    if kind == "sqlite":
        return f"sqlite:///{Path(target).resolve()}"
    if kind == "firestore":
        project = target or env.get("GOOGLE_CLOUD_PROJECT") or "(default project)"
        emulator = env.get("FIRESTORE_EMULATOR_HOST")
        return f"firestore://{project}" + (f" (emulator at {emulator})" if emulator else "")
    return "none"
