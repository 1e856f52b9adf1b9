"""A minimal Hugging Face Hub-protocol server for tests (stdlib only).

It speaks just enough of the Hub's HTTP API for the real `huggingface_hub` and
`transformers` clients: ``create_repo``, ``create_branch``, ``upload_folder`` /
``create_commit`` (preupload answers upload mode "regular", so files travel
base64-encoded inside the NDJSON commit and no LFS/xet storage is needed),
pull requests, ``model_info`` / ``repo_info``, ``list_repo_tree`` and file
download (``resolve/<rev>/<path>`` with the ETag, X-Repo-Commit and
Content-Length headers ``hf_hub_download`` checks).

Everything lives in memory. Each request is recorded (method, path, whether a
bearer token was sent, and which one) so tests can assert that the token reached
the server. Failures are injected realistically: an unknown token gets 401 as on
the Hub, a read-only token gets 403 on writes, and ``fail_status`` answers every
request whose path matches ``fail_pattern`` with that status.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_REV = r"(?P<rev>[^/]+)"  # revisions arrive URL-quoted ("refs%2Fpr%2F1")


def git_blob_sha(data: bytes) -> str:
    """The git object id of a blob (what the Hub calls a regular file's oid/ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    description: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    private: bool
    owner: str
    refs: dict[str, str] = field(default_factory=dict)  # "main", "dev", "refs/pr/1" -> sha
    commits: dict[str, Commit] = field(default_factory=dict)
    discussions: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = field(default_factory=_now)

    def resolve(self, rev: str) -> Commit | None:
        if rev in self.refs:
            return self.commits[self.refs[rev]]
        return self.commits.get(rev)

    def commit(self, ref: str, files: dict[str, bytes | None], message: str, description: str):
        """New commit on `ref` (created from main if missing); None deletes a path."""
        parent = self.refs.get(ref) or self.refs.get("main")
        tree = dict(self.commits[parent].files) if parent else {}
        for path, data in files.items():
            if data is None:
                tree = {p: d for p, d in tree.items() if p != path and not p.startswith(path + "/")}
            else:
                tree[path] = data
        digest = hashlib.sha1()
        digest.update(f"{parent}\n{message}\n{len(self.commits)}\n".encode())
        for p in sorted(tree):
            digest.update(f"{p}\0{git_blob_sha(tree[p])}\n".encode())
        sha = digest.hexdigest()
        self.commits[sha] = Commit(sha, parent, message, description, tree)
        self.refs[ref] = sha
        return self.commits[sha]


@dataclass
class RequestRecord:
    method: str
    path: str
    token: str | None


class HubState:
    """What the server knows: users' tokens, repos, and the request log."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tokens: dict[str, tuple[str, bool]] = {}  # token -> (user, can_write)
        self.repos: dict[str, Repo] = {}
        self.requests: list[RequestRecord] = []
        self.fail_status: int | None = None
        self.fail_pattern: str = ".*"

    def add_user(self, user: str, token: str, *, write: bool = True) -> None:
        self.tokens[token] = (user, write)

    def inject_failure(self, status: int | None, pattern: str = ".*") -> None:
        self.fail_status, self.fail_pattern = status, pattern

    def tokens_seen(self) -> set[str]:
        return {r.token for r in self.requests if r.token}

    def stored_files(self) -> dict[str, bytes]:
        """Every file of every commit of every repo, keyed ``repo@sha:path``."""
        out = {}
        for repo in self.repos.values():
            for commit in repo.commits.values():
                for path, data in commit.files.items():
                    out[f"{repo.repo_id}@{commit.sha}:{path}"] = data
        return out


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    # -- plumbing --------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass  # keep pytest output clean; the request log is in HubState

    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        payload: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        body = (
            raw if raw is not None else json.dumps(payload).encode() if payload is not None else b""
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None, **headers: str) -> None:
        extra = {"X-Error-Message": message, **headers}
        if code:
            extra["X-Error-Code"] = code
        self._send(status, {"error": message}, headers=extra)

    def _user(self, *, write: bool) -> str | None:
        """The caller's user name; sends 401/403 and returns None when refused."""
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if token is None:
            if write:
                self._error(401, "Invalid username or password.")
            return "" if not write else None
        if token not in self.state.tokens:
            self._error(401, "Invalid credentials in Authorization header")
            return None
        user, can_write = self.state.tokens[token]
        if write and not can_write:
            self._error(403, "You don't have the rights to write to this repository")
            return None
        return user

    def _repo(self, repo_id: str, user: str | None) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and user != repo.owner):
            self._error(404, "Repository not found", "RepoNotFound")
            return None
        return repo

    # -- dispatch --------------------------------------------------------------------
    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        body = self._body() if self.command in ("POST", "PUT") else b""
        with self.state.lock:
            self.state.requests.append(RequestRecord(self.command, path, token))
            if self.state.fail_status and re.search(self.state.fail_pattern, path):
                self._error(self.state.fail_status, "Injected failure")
                return
            for method, pattern, handler in _ROUTES:
                if method == self.command or (method == "GET" and self.command == "HEAD"):
                    m = re.fullmatch(pattern, path)
                    if m:
                        groups = {k: unquote(v) if v else v for k, v in m.groupdict().items()}
                        handler(self, body=body, query=query, **groups)
                        return
            self._error(404, f"No route for {self.command} {path}")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- API -------------------------------------------------------------------------
    def whoami(self, **_: Any) -> None:
        user = self._user(write=False)
        if user is None:
            return
        if not user:
            self._error(401, "Invalid username or password.")
            return
        self._send(200, {"type": "user", "name": user, "auth": {"type": "access_token"}})

    def validate_yaml(self, **_: Any) -> None:
        self._send(200, {"errors": [], "warnings": []})

    def create_repo(self, *, body: bytes, **_: Any) -> None:
        user = self._user(write=True)
        if user is None:
            return
        payload = json.loads(body or b"{}")
        if payload.get("type", "model") != "model":
            self._error(400, "only model repos are served here")
            return
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        if repo_id in self.state.repos:
            message = "You already created this model repo"
            self._send(
                409,
                {"error": message, "url": f"{self.base}/{repo_id}"},
                headers={"X-Error-Message": message},
            )
            return
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_id=repo_id, private=private, owner=user)
        repo.commit("main", {".gitattributes": GITATTRIBUTES}, "initial commit", "")
        self.state.repos[repo_id] = repo
        self._send(200, {"url": f"{self.base}/{repo_id}", "name": repo_id})

    def create_branch(self, *, repo: str, branch: str, body: bytes, **_: Any) -> None:
        user = self._user(write=True)
        r = self._repo(repo, user) if user is not None else None
        if r is None:
            return
        if branch in r.refs:
            self._error(409, "Reference already exists")
            return
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        base = r.resolve(start)
        if base is None:
            self._error(404, f"Invalid rev id: {start}", "RevisionNotFound")
            return
        r.refs[branch] = base.sha
        self._send(200, {})

    def model_info(self, *, repo: str, rev: str | None = None, **_: Any) -> None:
        user = self._user(write=False)
        r = self._repo(repo, user) if user is not None else None
        if r is None:
            return
        commit = r.resolve(rev or "main")
        if commit is None:
            self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return
        self._send(
            200,
            {
                "_id": hashlib.md5(repo.encode()).hexdigest()[:24],
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0],
                "sha": commit.sha,
                "private": r.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "library_name": "transformers",
                "createdAt": r.created_at,
                "lastModified": _now(),
                "siblings": [
                    {"rfilename": p, "size": len(d), "blobId": git_blob_sha(d)}
                    for p, d in sorted(commit.files.items())
                ],
            },
        )

    def list_tree(self, *, repo: str, rev: str, sub: str | None = None, query, **_: Any) -> None:
        user = self._user(write=False)
        r = self._repo(repo, user) if user is not None else None
        if r is None:
            return
        commit = r.resolve(rev)
        if commit is None:
            self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return
        prefix = (sub.strip("/") + "/") if sub else ""
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, dirs = [], set()
        for p, d in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            if "/" in rest and not recursive:
                dirs.add(prefix + rest.split("/")[0])
                continue
            entries.append({"type": "file", "oid": git_blob_sha(d), "size": len(d), "path": p})
        if prefix and not entries and not dirs:
            self._error(404, f"{sub} does not exist", "EntryNotFound")
            return
        folders = [
            {"type": "directory", "oid": "0" * 40, "size": 0, "path": p} for p in sorted(dirs)
        ]
        self._send(200, folders + entries)

    def preupload(self, *, repo: str, rev: str, body: bytes, **_: Any) -> None:
        user = self._user(write=True)
        r = self._repo(repo, user) if user is not None else None
        if r is None:
            return
        commit = r.resolve(rev) or r.resolve("main")
        files = json.loads(body)["files"]
        out = []
        for f in files:
            existing = commit.files.get(f["path"]) if commit else None
            out.append(
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha(existing) if existing is not None else None,
                }
            )
        self._send(200, {"files": out, "commitOid": commit.sha if commit else None})

    def commit(self, *, repo: str, rev: str, body: bytes, query, **_: Any) -> None:
        user = self._user(write=True)
        r = self._repo(repo, user) if user is not None else None
        if r is None:
            return
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), None)
        if header is None or not header.get("summary"):
            self._error(400, "commit header with a summary is required")
            return
        files: dict[str, bytes | None] = {}
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    self._error(400, "only base64 file content is supported")
                    return
                files[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                files[value["path"].rstrip("/")] = None
            elif key == "lfsFile":
                self._error(400, "this test server answers upload mode 'regular' only")
                return
        create_pr = query.get("create_pr", ["0"])[0] in ("1", "true")
        pr_url = None
        if create_pr:
            num = self._new_discussion(r, user, header["summary"], header.get("description", ""))
            ref = f"refs/pr/{num}"
            pr_url = f"{self.base}/{repo}/discussions/{num}"
        else:
            ref = rev
            if ref not in r.refs and ref != "main":
                self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                return
        parent = header.get("parentCommit")
        if parent is not None and r.refs.get(ref) != parent:
            self._error(412, "A commit has happened since. Please refresh and try again.")
            return
        c = r.commit(ref, files, header["summary"], header.get("description", ""))
        self._send(
            200,
            {
                "success": True,
                "commitOid": c.sha,
                "commitUrl": f"{self.base}/{repo}/commit/{c.sha}",
                "pullRequestUrl": pr_url,
                "hookOutput": "",
            },
        )

    def _new_discussion(self, r: Repo, user: str, title: str, description: str) -> int:
        num = len(r.discussions) + 1
        r.discussions.append(
            {"num": num, "title": title, "description": description, "author": user}
        )
        r.refs[f"refs/pr/{num}"] = r.refs["main"]
        return num

    def create_discussion(self, *, repo: str, body: bytes, **_: Any) -> None:
        user = self._user(write=True)
        r = self._repo(repo, user) if user is not None else None
        if r is None:
            return
        payload = json.loads(body)
        if not payload.get("pullRequest"):
            self._error(400, "only pull requests are served here")
            return
        num = self._new_discussion(r, user, payload["title"], payload.get("description", ""))
        self._send(200, {"num": num, "url": f"{self.base}/{repo}/discussions/{num}"})

    def discussion_details(self, *, repo: str, num: str, **_: Any) -> None:
        user = self._user(write=False)
        r = self._repo(repo, user) if user is not None else None
        if r is None:
            return
        d = next((x for x in r.discussions if str(x["num"]) == num), None)
        if d is None:
            self._error(404, "Discussion not found")
            return
        self._send(
            200,
            {
                "num": d["num"],
                "title": d["title"],
                "author": {"name": d["author"]},
                "createdAt": r.created_at,
                "status": "open",
                "repo": {"name": repo, "type": "model"},
                "isPullRequest": True,
                "events": [],
                "changes": {"base": "refs/heads/main"},
                "filesWithConflicts": [],
                "diff": "",
            },
        )

    def resolve_file(self, *, repo: str, rev: str, file: str, **_: Any) -> None:
        user = self._user(write=False)
        r = self._repo(repo, user) if user is not None else None
        if r is None:
            return
        commit = r.resolve(rev)
        if commit is None:
            self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return
        data = commit.files.get(file)
        if data is None:
            self._error(404, "Entry not found", "EntryNotFound", **{"X-Repo-Commit": commit.sha})
            return
        etag = git_blob_sha(data)
        status, payload, extra = 200, data, {}
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if rng and self.command == "GET":
            start = int(rng.group(1))
            end = int(rng.group(2)) if rng.group(2) else len(data) - 1
            payload = data[start : end + 1]
            status = 206
            extra["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(
            status,
            raw=payload,
            content_type="application/octet-stream",
            headers={
                "ETag": f'"{etag}"',
                "X-Repo-Commit": commit.sha,
                "Accept-Ranges": "bytes",
                **extra,
            },
        )


_ROUTES = [
    ("GET", r"/api/whoami-v2", HubHandler.whoami),
    ("POST", r"/api/validate-yaml", HubHandler.validate_yaml),
    ("POST", r"/api/repos/create", HubHandler.create_repo),
    ("POST", rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)", HubHandler.create_branch),
    ("POST", rf"/api/models/{_REPO}/preupload/{_REV}", HubHandler.preupload),
    ("POST", rf"/api/models/{_REPO}/commit/{_REV}", HubHandler.commit),
    ("POST", rf"/api/models/{_REPO}/discussions", HubHandler.create_discussion),
    ("GET", rf"/api/models/{_REPO}/discussions/(?P<num>\d+)", HubHandler.discussion_details),
    ("GET", rf"/api/models/{_REPO}/tree/{_REV}(?:/(?P<sub>.*))?", HubHandler.list_tree),
    ("GET", rf"/api/models/{_REPO}/revision/{_REV}", HubHandler.model_info),
    ("GET", rf"/api/models/{_REPO}", HubHandler.model_info),
    ("GET", rf"/{_REPO}/resolve/{_REV}/(?P<file>.+)", HubHandler.resolve_file),
]


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = HubState()
        super().__init__((host, port), HubHandler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def quote_rev(rev: str) -> str:
    return quote(rev, safe="")
