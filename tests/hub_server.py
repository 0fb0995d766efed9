"""A loopback Hugging Face Hub for tests: real client code pushes and pulls, nothing leaves the
host.

`LoopbackHub` is a standard-library HTTP server bound to 127.0.0.1 on an ephemeral port. It keeps
model repositories as git-like commits (blob ids are git blob SHA-1s, commit ids are SHA-1s of the
commit content) with the blobs in a temporary directory, and answers the part of the Hub API that
`huggingface_hub` 2.x uses to create a repo, commit files and download them again:

- ``POST /api/repos/create``                          create a model repo (409 if it exists)
- ``POST /api/validate-yaml``                          README metadata check (front matter shape)
- ``GET  /api/agent-harnesses``                        an empty registry (client agent detection)
- ``GET  /api/models/{repo}[/revision/{rev}]``         model info: ``sha``, ``siblings``
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]``      file listing (``recursive`` supported)
- ``POST /api/models/{repo}/preupload/{rev}``          every file uploads as ``regular``
- ``POST /api/models/{repo}/commit/{rev}``             NDJSON commit: header, file, deletedFile,
                                                      deletedFolder
- ``POST /api/models/{repo}/branch/{branch}``          create a branch
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``        file content with ``X-Repo-Commit``, ``ETag``

Errors carry the ``X-Error-Code`` header the client maps to its exceptions (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``). Writes need ``Authorization: Bearer <token>``; private
repos are invisible without it, as on the Hub. Unknown routes answer 404 and are recorded in
`LoopbackHub.unhandled` so a test can assert that the client asked for nothing unexpected.

The ``hub_server`` pytest fixture (import `hub_server_fixture` into a test module) starts a hub,
points `huggingface_hub` and `transformers` at it in-process (endpoint, token, a temporary
HF_HOME, offline mode off) and undoes all of it at teardown.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

logger = logging.getLogger(__name__)

__all__ = ["LoopbackHub", "git_blob_sha1", "hub_server_fixture"]

DEFAULT_NAMESPACE = "physmoe-tester"
DEFAULT_TOKEN = "hf_loopback_test_token"

# What the Hub commits as a new repo's first file (abridged to the patterns relevant here).
INITIAL_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pth filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_REPO = rf"(?P<repo>{_NAME}/{_NAME})"
_ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(r"^/api/agent-harnesses$"), "agent_harnesses"),
    ("GET", re.compile(rf"^/api/models/{_REPO}$"), "model_info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/revision/(?P<rev>[^/]+)$"), "model_info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$"), "tree"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<branch>[^/]+)$"), "create_branch"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a blob: SHA-1 of ``b"blob <size>\\0" + data`` (the Hub's ETag and oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    """An HTTP error answer: status, message, and the Hub's ``X-Error-Code`` when it has one."""

    def __init__(self, status: int, message: str, error_code: str | None = None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = dict(headers or {})


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, str]  # path in repo -> blob id
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)


class LoopbackHub:
    """An in-process Hub server on 127.0.0.1 (see the module docstring for the routes).

    Args:
        root: Directory for the blob store (a test's ``tmp_path`` sub-directory).
        token: The one access token the server accepts.
        namespace: The user that owns repos created without an organization.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        token: str = DEFAULT_TOKEN,
        namespace: str = DEFAULT_NAMESPACE,
    ):
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.namespace = namespace
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.unhandled: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._commit_counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the loopback hub is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackHub:
        handler = type("BoundHubHandler", (_HubRequestHandler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="loopback-hub",
            daemon=True,
        )
        self._thread.start()
        logger.info("loopback hub listening on %s (blobs in %s)", self.url, self.blob_dir)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        # Keep-alive client connections would otherwise keep their handler threads waiting.
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
        self._server = None
        logger.info("loopback hub stopped")

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for tests --------------------------------------------------------------------

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Content of every file of ``repo_id`` at ``revision`` (branch or commit id)."""
        with self._lock:
            commit = self._commit(self._repo(repo_id, authorized=True), revision)
            return {path: self._read_blob(oid) for path, oid in commit.files.items()}

    def history(self, repo_id: str, revision: str = "main") -> list[Commit]:
        """Commits reachable from ``revision``, newest first."""
        with self._lock:
            repo = self._repo(repo_id, authorized=True)
            commit = self._commit(repo, revision)
            history = [commit]
            while commit.parent is not None:
                commit = repo.commits[commit.parent]
                history.append(commit)
            return history

    # -- storage ------------------------------------------------------------------------------

    def _write_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        path = self.blob_dir / oid
        if not path.exists():
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return oid

    def _read_blob(self, oid: str) -> bytes:
        return (self.blob_dir / oid).read_bytes()

    def _new_commit(
        self, repo: Repo, parent: str | None, summary: str, description: str, files: dict[str, str]
    ) -> Commit:
        self._commit_counter += 1
        content = json.dumps(
            {
                "parent": parent,
                "summary": summary,
                "description": description,
                "tree": sorted(files.items()),
                "sequence": self._commit_counter,
            },
        ).encode()
        commit = Commit(
            oid=hashlib.sha1(content).hexdigest(),
            parent=parent,
            summary=summary,
            description=description,
            files=dict(files),
            date=_now(),
        )
        repo.commits[commit.oid] = commit
        return commit

    def _repo(self, repo_id: str, authorized: bool) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not authorized):
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        revision = unquote(revision)
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if _COMMIT_SHA.match(revision) and revision in repo.commits:
            return repo.commits[revision]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _repo_url(self, repo_id: str) -> str:
        return f"{self.url}/{repo_id}"

    # -- routes -------------------------------------------------------------------------------

    def create_repo(self, request: _Request) -> tuple[int, dict]:
        request.require_token()
        body = request.json()
        if body.get("type", "model") != "model":
            raise HubError(400, "the loopback hub only serves model repositories")
        name, organization = body.get("name"), body.get("organization") or self.namespace
        repo_id = f"{organization}/{name}"
        if not isinstance(name, str) or not re.fullmatch(rf"{_NAME}/{_NAME}", repo_id):
            raise HubError(400, f"Invalid repo name: {repo_id!r}")
        private = body.get("visibility") == "private" or bool(body.get("private"))
        with self._lock:
            if repo_id in self.repos:  # the client reads "url" from this answer (exist_ok)
                return 409, {
                    "error": "You already created this model repo",
                    "url": self._repo_url(repo_id),
                }
            repo = Repo(repo_id=repo_id, private=private, created_at=_now())
            blob = self._write_blob(INITIAL_GITATTRIBUTES)
            commit = self._new_commit(repo, None, "initial commit", "", {".gitattributes": blob})
            repo.branches["main"] = commit.oid
            self.repos[repo_id] = repo
        logger.info("created %s repo %s", "private" if private else "public", repo_id)
        return 200, {"url": self._repo_url(repo_id), "name": repo_id, "id": repo_id}

    def validate_yaml(self, request: _Request) -> tuple[int, dict]:
        content = request.json().get("content", "")
        # Only the front matter's shape is checked: parsing YAML is the client's job.
        if content.startswith("---") and re.search(r"^---\s*$", content[3:], re.M) is None:
            return 400, {"errors": [{"message": "metadata block is not closed by '---'"}]}
        return 200, {"errors": [], "warnings": []}

    def agent_harnesses(self, request: _Request) -> tuple[int, dict]:
        # Fetched once per process by huggingface_hub's agent detection (a header detail).
        return 200, {"standardEnvVars": [], "harnesses": {}}

    def model_info(self, request: _Request, repo: str, rev: str = "main") -> tuple[int, dict]:
        with self._lock:
            record = self._repo(repo, request.authorized)
            commit = self._commit(record, rev)
            with_blobs = request.query.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for path, oid in sorted(commit.files.items()):
                sibling = {"rfilename": path}
                if with_blobs:
                    sibling.update(size=(self.blob_dir / oid).stat().st_size, blobId=oid)
                siblings.append(sibling)
        return 200, {
            "_id": hashlib.sha1(repo.encode()).hexdigest()[:24],
            "id": repo,
            "modelId": repo,
            "author": repo.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": record.created_at,
            "private": record.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }

    def tree(self, request: _Request, repo: str, rev: str, path: str | None = None):
        recursive = request.query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{unquote(path).strip('/')}/" if path else ""
        with self._lock:
            commit = self._commit(self._repo(repo, request.authorized), rev)
            entries: dict[str, dict] = {}
            for file_path, oid in sorted(commit.files.items()):
                if not file_path.startswith(prefix):
                    continue
                parts = file_path[len(prefix) :].split("/")
                depth = len(parts) if recursive else 1
                for i in range(1, min(depth, len(parts) - 1) + 1):  # folders on the way
                    folder = prefix + "/".join(parts[:i])
                    folder_oid = hashlib.sha1(f"tree {commit.oid} {folder}".encode()).hexdigest()
                    entries.setdefault(
                        folder, {"type": "directory", "oid": folder_oid, "size": 0, "path": folder}
                    )
                if recursive or len(parts) == 1:
                    entries[file_path] = {
                        "type": "file",
                        "oid": oid,
                        "path": file_path,
                        "size": (self.blob_dir / oid).stat().st_size,
                    }
        if prefix and not entries:
            raise HubError(404, f"{prefix.rstrip('/')} does not exist", "EntryNotFound")
        return 200, list(entries.values())

    def preupload(self, request: _Request, repo: str, rev: str) -> tuple[int, dict]:
        request.require_token()
        if "create_pr" in request.query:
            raise HubError(400, "the loopback hub does not support pull requests")
        files = request.json().get("files")
        if not isinstance(files, list):
            raise HubError(400, "preupload body needs a 'files' list")
        with self._lock:
            commit = self._commit(self._repo(repo, True), rev)
            answer = [
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": commit.files.get(f["path"]),
                }
                for f in files
            ]
        return 200, {"files": answer, "commitOid": commit.oid}

    def commit(self, request: _Request, repo: str, rev: str) -> tuple[int, dict]:
        request.require_token()
        if "create_pr" in request.query:
            raise HubError(400, "the loopback hub does not support pull requests")
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "a commit starts with a 'header' line")
        header = lines[0]["value"]
        branch = unquote(rev)
        with self._lock:
            record = self._repo(repo, True)
            if branch not in record.branches:
                raise HubError(
                    404, f"Invalid rev id: {branch} (commits go to a branch)", "RevisionNotFound"
                )
            head = record.commits[record.branches[branch]]
            if header.get("parentCommit") not in (None, head.oid):
                raise HubError(
                    412,
                    f"parent commit {header['parentCommit']} is not the head "
                    f"of {branch} ({head.oid})",
                )
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = _checked_path(value.get("path", ""))
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, f"{path}: only base64 file content is supported")
                    files[path] = self._write_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(
                            404, f"A file with this name doesn't exist: {path}", "EntryNotFound"
                        )
                elif key == "deletedFolder":
                    files = {p: o for p, o in files.items() if not p.startswith(path + "/")}
                else:  # lfsFile, or anything else: never requested since preupload says regular
                    raise HubError(400, f"unsupported commit operation {key!r} for {path}")
            commit = self._new_commit(
                record, head.oid, header.get("summary", ""), header.get("description", ""), files
            )
            record.branches[branch] = commit.oid
        logger.info("commit %s on %s@%s: %s", commit.oid[:8], repo, branch, commit.summary)
        return 200, {
            "commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}",
            "commitOid": commit.oid,
            "pullRequestUrl": None,
            "success": True,
        }

    def create_branch(self, request: _Request, repo: str, branch: str) -> tuple[int, dict]:
        request.require_token()
        branch = unquote(branch)
        with self._lock:
            record = self._repo(repo, True)
            if branch in record.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = (request.json() if request.body else {}).get("startingPoint") or "main"
            record.branches[branch] = self._commit(record, start).oid
        return 200, {}

    def resolve(self, request: _Request, repo: str, rev: str, path: str) -> tuple[int, bytes]:
        path = unquote(path)
        with self._lock:
            commit = self._commit(self._repo(repo, request.authorized), rev)
            oid = commit.files.get(path)
            if oid is None:
                raise HubError(
                    404,
                    f"Entry not found: {path}",
                    "EntryNotFound",
                    headers={"X-Repo-Commit": commit.oid},
                )
            data = self._read_blob(oid)
        request.extra_headers.update(
            {
                "X-Repo-Commit": commit.oid,
                "ETag": f'"{oid}"',
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'inline; filename="{quote(Path(path).name)}"',
            }
        )
        return 200, data


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    token: str
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def authorized(self) -> bool:
        return self.headers.get("authorization") == f"Bearer {self.token}"

    def require_token(self) -> None:
        if not self.authorized:
            raise HubError(
                401,
                "Invalid credentials in Authorization header",
                headers={"X-Error-Message": "Invalid credentials in Authorization header"},
            )

    def json(self) -> dict:
        try:
            value = json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"request body is not JSON: {error}") from error
        if not isinstance(value, dict):
            raise HubError(400, "request body must be a JSON object")
        return value


class _HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every answer has a length
    timeout = 30  # an idle keep-alive connection ends after this
    hub: LoopbackHub  # set on the bound subclass

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.hub._lock:
            self.hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        logger.debug("loopback hub: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip(), 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        request = _Request(
            method=method,
            path=url.path,
            query=parse_qs(url.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._read_body() if method in ("POST", "PUT") else b"",
            token=self.hub.token,
        )
        self.hub.requests.append((method, url.path))
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(url.path)
            if route_method == method and match:
                try:
                    status, payload = getattr(self.hub, name)(request, **match.groupdict())
                except HubError as error:
                    self._answer_error(error)
                    return
                self._answer(status, payload, request.extra_headers, head=(method == "HEAD"))
                return
        logger.warning("loopback hub: no route for %s %s", method, url.path)
        self.hub.unhandled.append((method, url.path))
        self._answer_error(HubError(404, f"no route for {method} {url.path}"))

    def _answer(self, status: int, payload, headers: dict[str, str], head: bool = False) -> None:
        if isinstance(payload, bytes):
            data = payload
        else:
            data = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json; charset=utf-8", **headers}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _answer_error(self, error: HubError) -> None:
        headers = dict(error.headers)
        if error.error_code:
            headers["X-Error-Code"] = error.error_code
        headers.setdefault("X-Error-Message", error.message)
        logger.debug("loopback hub: %s -> %d %s", self.path, error.status, error.message)
        self._answer(error.status, {"error": error.message}, headers, head=self.command == "HEAD")


def _checked_path(path: str) -> str:
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise HubError(400, f"invalid path in repo: {path!r}")
    return path


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture(name="hub_server")
def hub_server_fixture(tmp_path, monkeypatch):
    """A running `LoopbackHub` that `huggingface_hub` and `transformers` talk to for one test.

    Patches, all undone at teardown: the Hub endpoint and download URL template, offline mode off
    (scripts/test.sh exports HF_HUB_OFFLINE=1), HF_TOKEN, HF_HOME and every path derived from it
    (cache, token, agent registry) under ``tmp_path``, telemetry off, the agent-harness registry
    (would be fetched from the endpoint), and transformers' cached `HfApi`.
    """
    import huggingface_hub.hf_api
    import transformers.utils.hub
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    hub = LoopbackHub(tmp_path / "hub-server").start()
    home = tmp_path / "hf-home"
    old_home = constants.HF_HOME
    for name in dir(constants):  # HF_HUB_CACHE, HF_TOKEN_PATH, AGENT_HARNESSES_PATH, ...
        value = getattr(constants, name)
        if name.isupper() and isinstance(value, str) and value.startswith(old_home):
            monkeypatch.setattr(constants, name, str(home) + value[len(old_home) :])
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    monkeypatch.setattr(_detect_agent, "_registry", _detect_agent._EMPTY_REGISTRY)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.url)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    try:
        yield hub
    finally:
        hub.stop()
