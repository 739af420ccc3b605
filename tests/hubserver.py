"""A Hugging Face Hub on the loopback, for tests: the endpoints the installed ``huggingface_hub``
client calls to download a model (read from its code: ``HfApi.model_info`` and
``hf_hub_download``), answering as the Hub does.

* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (``?blobs=True``): the repo's
  commit ``sha`` and ``siblings`` with ``rfilename``, ``size``, ``blobId`` (and ``lfs`` for weights);
* ``GET /api/models/{repo}/tree/{rev}``: the file listing;
* ``HEAD`` / ``GET /{repo}/resolve/{rev}/{file}``: ``X-Repo-Commit``, ``ETag``, ``Content-Length``
  (``X-Linked-Etag`` / ``X-Linked-Size`` for LFS files), ``Accept-Ranges`` and ``Range`` requests
  answered with 206 and ``Content-Range``;
* errors with the Hub's ``X-Error-Code``: ``RepoNotFound`` (404), ``RevisionNotFound`` (404),
  ``EntryNotFound`` (404), ``GatedRepo`` (403).

Every request is logged (method, path, Range header) so a test can assert what was fetched.
``drop_after[(repo, file)] = n`` makes the next GET of that file (whole or a range) send ``n``
bytes of its body and close the connection (a transfer broken off mid-file); ``drop_every`` does
so for every GET of it (a line that keeps failing, until the test removes the entry);
``throttle`` slows every body down; ``ignore_ranges`` answers every GET with the whole file.  The
server runs on 127.0.0.1 only.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".bin", ".h5", ".safetensors", ".msgpack", ".onnx", ".pt")


class Repo:
    def __init__(self, repo_id: str, gated: bool = False):
        self.repo_id, self.gated = repo_id, gated
        self.commits: dict[str, dict[str, bytes]] = {}
        self.refs: dict[str, str] = {}  # branch or tag -> commit

    def commit(self, files: dict[str, bytes], branch: str = "main") -> str:
        h = hashlib.sha1(repr(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items())).encode()
                         + branch.encode())
        sha = h.hexdigest()
        self.commits[sha] = dict(files)
        self.refs[branch] = sha
        return sha

    def resolve(self, rev: str | None) -> str | None:
        rev = rev or "main"
        if rev in self.refs:
            return self.refs[rev]
        return rev if rev in self.commits else None


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class LoopbackHub:
    def __init__(self, port: int):
        self.port = port
        self.repos: dict[str, Repo] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self.drop_after: dict[tuple[str, str], int] = {}
        self.drop_every: dict[tuple[str, str], int] = {}
        self.throttle: float = 0.0  # seconds of pause after every 64 kB of a file's body (a slow link)
        self.ignore_ranges = False  # answer a Range request with the whole file (200), as some proxies do
        self._lock = threading.Lock()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, repo_id: str, folder: Path, branch: str = "main", gated: bool = False) -> str:
        repo = self.repos.setdefault(repo_id, Repo(repo_id, gated))
        repo.gated = repo.gated or gated
        return repo.commit(folder_files(folder), branch)

    def downloads(self) -> list[tuple[str, str]]:
        """(repo, file) of every GET of a file's bytes, in order."""
        out = []
        for method, path, _ in self.log:
            m = re.fullmatch(r"/(.+?/.+?)/resolve/[^/]+/(.+)", path)
            if method == "GET" and m:
                out.append((m.group(1), m.group(2)))
        return out

    def start(self) -> "LoopbackHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                try:
                    hub._handle(self, head=False)
                except (ConnectionResetError, BrokenPipeError):
                    pass  # the client went away mid-file (Cancel, an error on its side): as a server sees it

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- answers ---------------------------------------------------------------------------
    def _error(self, h, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _json(self, h, data) -> None:
        body = json.dumps(data).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _repo(self, h, repo_id: str, rev: str | None):
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 404, "RepoNotFound", "Repository not found")
            return None, None
        if repo.gated:
            self._error(h, 403, "GatedRepo", "Access to this model is restricted: you must accept its conditions")
            return None, None
        sha = repo.resolve(rev)
        if sha is None:
            self._error(h, 404, "RevisionNotFound", "Invalid rev id: " + str(rev))
            return None, None
        return repo, sha

    def _handle(self, h, head: bool) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        with self._lock:
            self.log.append((h.command, path, h.headers.get("Range")))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
        if m and not head:
            repo, sha = self._repo(h, m.group(1), m.group(2))
            if repo is None:
                return
            siblings = []
            for name, data in sorted(repo.commits[sha].items()):
                s = {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
                if name.endswith(LFS_SUFFIXES):
                    s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                siblings.append(s)
            return self._json(h, {"id": repo.repo_id, "modelId": repo.repo_id, "sha": sha, "private": False,
                                  "gated": False, "disabled": False, "siblings": siblings, "tags": []})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m and not head:
            repo, sha = self._repo(h, m.group(1), m.group(2))
            if repo is None:
                return
            prefix = (m.group(3) or "").strip("/")
            items = [{"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                     for n, d in sorted(repo.commits[sha].items()) if n.startswith(prefix)]
            return self._json(h, items)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo, sha = self._repo(h, m.group(1), m.group(2))
            if repo is None:
                return
            data = repo.commits[sha].get(m.group(3))
            if data is None:
                return self._error(h, 404, "EntryNotFound", "Entry not found")
            return self._file(h, head, repo.repo_id, m.group(3), sha, data)
        self._error(h, 404, "RepoNotFound", "Not found")

    def _file(self, h, head: bool, repo_id: str, name: str, sha: str, data: bytes) -> None:
        etag = hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else hashlib.sha1(data).hexdigest()
        start, status = 0, 200
        rng = h.headers.get("Range")
        if rng and not head and not self.ignore_ranges:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m:
                start, status = int(m.group(1)), 206
        body = data[start:]
        h.send_response(status)
        h.send_header("X-Repo-Commit", sha)
        h.send_header("ETag", f'"{etag}"')
        if name.endswith(LFS_SUFFIXES):
            h.send_header("X-Linked-Etag", f'"{etag}"')
            h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        cut = self.drop_after.pop((repo_id, name), None)
        if cut is None:
            cut = self.drop_every.get((repo_id, name))
        if cut is not None:
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            import socket

            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if self.throttle:
            import time

            for i in range(0, len(body), 2**16):
                h.wfile.write(body[i:i + 2**16])
                h.wfile.flush()
                time.sleep(self.throttle)
            return
        h.wfile.write(body)
