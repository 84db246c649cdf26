"""Fixtures of the infra tests: a local Keystone + Blazar + Nova + Glance + Neutron stub on
127.0.0.1 (the requests openstacksdk makes: version discovery, look-ups by id then by name), and a
runner of `chexops infra ...` in this process."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from support import chexops

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
REGION = "KVM@TACC"
APP_CRED_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
APP_CRED_SECRET = "stub-secret"
EXPIRED_CRED_ID = "e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0"
#: A credential created without *Unrestricted* ticked (Keystone says `"restricted": true`).
RESTRICTED_CRED_ID = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e"
#: A colleague's credential in the same project: another Keystone user.
COLLEAGUE_CRED_ID = "c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0"
OPERATOR_USER_ID = "3ecacbbc4acc467faa664ee26eea115d"
COLLEAGUE_USER_ID = "7d1f1e2a6b9c4d0e8f3a2b1c0d9e8f7a"
#: credential id -> (user id, restricted)
CREDENTIALS = {
    APP_CRED_ID: (OPERATOR_USER_ID, False),
    RESTRICTED_CRED_ID: (OPERATOR_USER_ID, True),
    COLLEAGUE_CRED_ID: (COLLEAGUE_USER_ID, False),
}


def _fixture(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / name).read_text())
    data.pop("_comment", None)
    return data


def _blazar_date(text: str) -> str:
    """Request format 'YYYY-MM-DD HH:MM' (or 'now') -> Blazar's response format."""
    if text == "now":
        moment = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    else:
        moment = datetime.strptime(text, "%Y-%m-%d %H:%M")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000000")


class OpenStackStub:
    """State and behaviour of the fake cloud; tests tweak `outcome` and read `requests`."""

    def __init__(self) -> None:
        self.base = ""
        #: token -> the Keystone user id it was issued to (Blazar records it as a lease's user_id).
        self.tokens: dict[str, str] = {}
        #: Tokens of restricted application credentials: Blazar cannot make the trust a lease needs.
        self.restricted_tokens: set[str] = set()
        self.colleague_user_id = COLLEAGUE_USER_ID
        self.leases: dict[str, dict[str, Any]] = {}
        self.polls: dict[str, int] = {}
        self.requests: list[tuple[str, str, Any]] = []
        #: What a new lease becomes after `activate_after` GETs: ACTIVE, ERROR, or PENDING (never starts).
        self.outcome = "ACTIVE"
        self.activate_after = 1
        #: What Nova, Glance and Neutron hold (tests add or remove items).
        self.flavors = _fixture("nova_flavors.json")["flavors"]
        self.keypairs = [item["keypair"] for item in _fixture("nova_keypairs.json")["keypairs"]]
        self.images = _fixture("glance_images.json")["images"]
        self.networks = _fixture("neutron_networks.json")["networks"]
        #: Neutron floating IPs that Blazar put in the project for active floating-IP reservations.
        self.floatingips: list[dict[str, Any]] = []
        #: Cinder: volumes (tests add them with `add_volume`) and snapshots by id; a new snapshot is `available`
        #: after `snapshot_ready_after` GETs, or `snapshot_outcome` ("error") if that is set.
        self.volumes: list[dict[str, Any]] = []
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.snapshot_polls: dict[str, int] = {}
        self.snapshot_ready_after = 2
        self.snapshot_outcome = "available"

    # --- Version documents (keystoneauth's discovery) ----------------------------------------
    def versions(self, service: str) -> dict[str, Any] | None:
        docs = {
            "glance": {
                "versions": [
                    {"id": "v2.16", "status": "CURRENT", "links": [{"rel": "self", "href": f"{self.base}/glance/v2/"}]}
                ]
            },
            "neutron": {
                "versions": [
                    {
                        "id": "v2.0",
                        "status": "CURRENT",
                        "links": [{"rel": "self", "href": f"{self.base}/neutron/v2.0/"}],
                    }
                ]
            },
            "nova": {
                "version": {
                    "id": "v2.1",
                    "status": "CURRENT",
                    "version": "2.96",
                    "min_version": "2.1",
                    "links": [{"rel": "self", "href": f"{self.base}/nova/v2.1/"}],
                }
            },
        }
        return docs.get(service)

    # --- Nova, Glance, Neutron look-ups ------------------------------------------------------
    def lookup(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any] | None:
        """GET of a collection (filtered by name and router:external) or of one item by id/name."""
        collections = {
            "/nova/v2.1/flavors/detail": ("flavors", self.flavors, None),
            "/nova/v2.1/flavors": ("flavors", self.flavors, "flavor"),
            "/nova/v2.1/os-keypairs": ("keypairs", self.keypairs, "keypair"),
            "/glance/v2/images": ("images", self.images, ""),
            "/neutron/v2.0/networks": ("networks", self.networks, "network"),
        }
        if path in collections:
            key, items, _ = collections[path]
            selected = [i for i in items if "name" not in query or i.get("name") == query["name"][0]]
            if "router:external" in query:
                wanted = query["router:external"][0].lower() == "true"
                selected = [i for i in selected if i.get("router:external") is wanted]
            if key == "keypairs":
                return 200, {key: [{"keypair": i} for i in selected]}
            return 200, {key: copy.deepcopy(selected)}
        parent, _, ident = path.rpartition("/")
        if parent in collections and ident != "detail":
            _, items, single = collections[parent]
            field = "name" if single == "keypair" else "id"
            for item in items:
                if item.get(field) == ident:
                    return 200, (copy.deepcopy(item) if single == "" else {single: copy.deepcopy(item)})
            return 404, {"itemNotFound": {"code": 404, "message": f"{ident} could not be found."}}
        return None

    # --- Keystone -------------------------------------------------------------------------------
    def auth(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        identity = body.get("auth", {}).get("identity", {})
        cred = identity.get("application_credential", {})
        unauthorized = {
            "error": {
                "code": 401,
                "message": "The request you have made requires authentication.",
                "title": "Unauthorized",
            }
        }
        if "application_credential" not in identity.get("methods", []):
            return 401, unauthorized, {}
        if cred.get("id") not in CREDENTIALS or cred.get("secret") != APP_CRED_SECRET:
            return 401, unauthorized, {}
        user_id, restricted = CREDENTIALS[cred["id"]]
        token = uuid.uuid4().hex
        self.tokens[token] = user_id
        if restricted:
            self.restricted_tokens.add(token)
        text = (FIXTURES / "keystone_token.json").read_text()
        text = text.replace("${BASE}", self.base).replace("${REGION}", REGION).replace("${APP_CRED_ID}", cred["id"])
        data = json.loads(text)
        data.pop("_comment", None)
        data["token"]["user"]["id"] = user_id
        data["token"]["application_credential"]["restricted"] = restricted
        return 201, data, {"X-Subject-Token": token}

    # --- Blazar ---------------------------------------------------------------------------------
    def not_found(self, lease_id: str) -> tuple[int, dict[str, Any]]:
        return 404, {
            "error_code": 404,
            "error_message": f"Object with {{'lease_id': '{lease_id}'}} not found",
            "error_name": 404,
        }

    def create_lease(self, body: dict[str, Any], token: str) -> tuple[int, dict[str, Any]]:
        if token in self.restricted_tokens:
            # What Blazar answers when Keystone refuses it a trust for a restricted application credential.
            return 500, {"error_code": 500, "error_message": "Internal Server Error", "error_name": 500}
        user_id = self.tokens[token]
        for key in ("name", "start_date", "end_date", "reservations"):
            if key not in body:
                return 400, {"error_code": 400, "error_message": f"Missing {key}", "error_name": 400}
        if any(lease["name"] == body["name"] for lease in self.leases.values()):
            return 409, {
                "error_code": 409,
                "error_message": f"The lease with name: {body['name']} already exists",
                "error_name": 409,
            }
        request = body["reservations"][0]
        if request["resource_type"] == "flavor:instance":
            lease = _fixture("blazar_lease_flavor.json")["lease"]
        else:
            lease = _fixture("blazar_lease_host.json")["lease"]
        lease_id, res_id = str(uuid.uuid4()), str(uuid.uuid4())
        res = lease["reservations"][0]
        res.update({"id": res_id, "lease_id": lease_id, "status": "pending"})
        if request["resource_type"] == "flavor:instance":
            res.update({"flavor_id": res_id, "amount": request["amount"]})
        else:
            res.update(
                {"min": request["min"], "max": request["max"], "resource_properties": request["resource_properties"]}
            )
        for extra in body["reservations"][1:]:
            if extra.get("resource_type") != "virtual:floatingip":
                return 400, {"error_code": 400, "error_message": "One node reservation per lease", "error_name": 400}
            external = {n["id"] for n in self.networks if n.get("router:external")}
            if extra.get("network_id") not in external or int(extra.get("amount") or 0) < 1:
                return 400, {
                    "error_code": 400,
                    "error_message": f"Invalid floating IP reservation: {extra}",
                    "error_name": 400,
                }
            lease["reservations"].append(
                {
                    "id": str(uuid.uuid4()),
                    "lease_id": lease_id,
                    "resource_type": "virtual:floatingip",
                    "network_id": extra["network_id"],
                    "amount": int(extra["amount"]),
                    "required_floatingips": [],
                    "status": "pending",
                }
            )
        lease.update(
            {
                "id": lease_id,
                "name": body["name"],
                "status": "PENDING",
                "start_date": _blazar_date(body["start_date"]),
                "end_date": _blazar_date(body["end_date"]),
                "user_id": user_id,
            }
        )
        self.leases[lease_id] = lease
        self.polls[lease_id] = 0
        return 201, {"lease": copy.deepcopy(lease)}

    def get_lease(self, lease_id: str) -> tuple[int, dict[str, Any]]:
        lease = self.leases.get(lease_id)
        if lease is None:
            return self.not_found(lease_id)
        self.polls[lease_id] += 1
        if lease["status"] == "PENDING" and self.polls[lease_id] >= self.activate_after and self.outcome != "PENDING":
            lease["status"] = self.outcome
            for res in lease["reservations"]:
                res["status"] = "active" if self.outcome == "ACTIVE" else "error"
                if self.outcome == "ACTIVE" and res.get("resource_type") == "virtual:floatingip":
                    self.add_reserved_floatingips(res)
        return 200, {"lease": copy.deepcopy(lease)}

    def update_lease(self, lease_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        lease = self.leases.get(lease_id)
        if lease is None:
            return self.not_found(lease_id)
        if lease["status"] not in {"PENDING", "ACTIVE"}:
            return 409, {
                "error_code": 409,
                "error_message": f"Lease {lease_id} is {lease['status']}",
                "error_name": 409,
            }
        if "end_date" in body:
            lease["end_date"] = _blazar_date(body["end_date"])
        return 200, {"lease": copy.deepcopy(lease)}

    def delete_lease(self, lease_id: str) -> tuple[int, dict[str, Any] | None]:
        if lease_id not in self.leases:
            return self.not_found(lease_id)
        reservations = {f"reservation:{r['id']}" for r in self.leases[lease_id]["reservations"]}
        self.floatingips = [ip for ip in self.floatingips if not reservations & set(ip["tags"])]
        del self.leases[lease_id]
        return 204, None

    # --- Neutron floating IPs of reservations (Blazar creates them, tagged, when the lease starts) ----------
    def add_reserved_floatingips(self, res: dict[str, Any]) -> None:
        for _ in range(int(res["amount"])):
            self.floatingips.append(
                {
                    "id": str(uuid.uuid4()),
                    "floating_ip_address": f"129.114.108.{10 + len(self.floatingips)}",
                    "floating_network_id": res["network_id"],
                    "status": "DOWN",
                    "tags": ["blazar", f"reservation:{res['id']}"],
                }
            )

    def list_floatingips(self, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """Neutron's `tags` filter: every listed tag (comma-separated) must be on the floating IP."""
        wanted = set(query["tags"][0].split(",")) if "tags" in query else set()
        found = [ip for ip in self.floatingips if wanted <= set(ip["tags"])]
        if "floating_ip_address" in query:
            found = [ip for ip in found if ip["floating_ip_address"] == query["floating_ip_address"][0]]
        return 200, {"floatingips": copy.deepcopy(found)}

    # --- Cinder volumes and snapshots -------------------------------------------------------------------
    def add_volume(self, name: str, status: str = "in-use", size: int = 100) -> dict[str, Any]:
        volume = {"id": str(uuid.uuid4()), "name": name, "status": status, "size": size, "metadata": {}}
        self.volumes.append(volume)
        return volume

    def cinder(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any] | None:
        """Routes under /cinder/v3/<project>: volumes/detail, snapshots, snapshots/detail, snapshots/<id>."""
        parts = path.split("/")[4:]  # '', 'cinder', 'v3', '<project>', ...
        if parts == ["volumes", "detail"] and method == "GET":
            found = [v for v in self.volumes if "name" not in query or v["name"] == query["name"][0]]
            return 200, {"volumes": copy.deepcopy(found)}
        if parts == ["snapshots"] and method == "POST":
            return self.create_snapshot(body.get("snapshot") or {})
        if parts == ["snapshots", "detail"] and method == "GET":
            found = [
                s for s in self.snapshots.values() if query.get("volume_id", [s["volume_id"]])[0] == s["volume_id"]
            ]
            return 200, {"snapshots": copy.deepcopy(found)}
        if len(parts) == 2 and parts[0] == "snapshots":
            snap = self.snapshots.get(parts[1])
            if snap is None:
                return 404, {"itemNotFound": {"code": 404, "message": f"Snapshot {parts[1]} could not be found."}}
            if method == "GET":
                self.snapshot_polls[snap["id"]] += 1
                if snap["status"] == "creating" and self.snapshot_polls[snap["id"]] >= self.snapshot_ready_after:
                    snap["status"] = self.snapshot_outcome
                return 200, {"snapshot": copy.deepcopy(snap)}
            if method == "DELETE":
                del self.snapshots[snap["id"]]
                return 202, None
        return None

    def create_snapshot(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        volume = next((v for v in self.volumes if v["id"] == request.get("volume_id")), None)
        if volume is None:
            return 404, {
                "itemNotFound": {"code": 404, "message": f"Volume {request.get('volume_id')} could not be found."}
            }
        if volume["status"] == "in-use" and request.get("force") is not True:
            return 400, {
                "badRequest": {
                    "code": 400,
                    "message": f"Invalid volume: Volume {volume['id']} status must be available, but current status "
                    "is: in-use.",
                }
            }
        snap = {
            "id": str(uuid.uuid4()),
            "name": request.get("name"),
            "description": request.get("description"),
            "volume_id": volume["id"],
            "size": volume["size"],
            "status": "creating",
            "metadata": dict(request.get("metadata") or {}),
            "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f"),
        }
        self.snapshots[snap["id"]] = snap
        self.snapshot_polls[snap["id"]] = 0
        return 202, {"snapshot": copy.deepcopy(snap)}


def _make_handler(stub: OpenStackStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the stub
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            payload = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            return json.loads(raw) if raw else {}

        def _route(self, method: str) -> None:
            body = self._body()
            url = urlsplit(self.path)
            path, query = url.path.rstrip("/"), parse_qs(url.query)
            stub.requests.append((method, path, body))
            if method == "GET" and path.count("/") <= 2 and (doc := stub.versions(path.strip("/").split("/")[0])):
                if path.strip("/") in ("glance", "neutron", "nova/v2.1"):
                    return self._send(200, doc)
            if path == "/identity/v3/auth/tokens" and method == "POST":
                status, data, headers = stub.auth(body)
                return self._send(status, data, headers)
            if self.headers.get("X-Auth-Token") not in stub.tokens:
                return self._send(
                    401, {"error": {"code": 401, "message": "Authentication required", "title": "Unauthorized"}}
                )
            if method == "GET" and (found := stub.lookup(path, query)) is not None:
                return self._send(*found)
            if path == "/blazar/v1/leases":
                if method == "GET":
                    return self._send(200, {"leases": [copy.deepcopy(lease) for lease in stub.leases.values()]})
                if method == "POST":
                    return self._send(*stub.create_lease(body, self.headers["X-Auth-Token"]))
            if path.startswith("/blazar/v1/leases/"):
                lease_id = path.rsplit("/", 1)[1]
                if method == "GET":
                    return self._send(*stub.get_lease(lease_id))
                if method == "PUT":
                    return self._send(*stub.update_lease(lease_id, body))
                if method == "DELETE":
                    return self._send(*stub.delete_lease(lease_id))
            if path == "/neutron/v2.0/floatingips" and method == "GET":
                return self._send(*stub.list_floatingips(query))
            if path.startswith("/cinder/v3/") and (found := stub.cinder(method, path, query, body)) is not None:
                return self._send(*found)
            return self._send(
                404, {"error": {"code": 404, "message": f"No route {method} {path}", "title": "Not Found"}}
            )

        def do_GET(self) -> None:  # noqa: N802
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._route("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._route("DELETE")

    return Handler


@contextlib.contextmanager
def local_server(handler: type[BaseHTTPRequestHandler]):
    """Serve handler on 127.0.0.1 (a free port) in a thread; yields the base URL, stops on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def openstack_stub():
    """A Keystone/Blazar/Nova/Glance/Neutron stub on 127.0.0.1 (a free port), stopped after the test."""
    stub = OpenStackStub()
    with local_server(_make_handler(stub)) as stub.base:
        yield stub


@pytest.fixture()
def clouds_env(tmp_path, openstack_stub):
    """Environment with a clouds.yaml naming the stub: 'stub' (valid, unrestricted), 'stub_expired' (401),
    'stub_restricted' (a restricted application credential) and 'stub_colleague' (another user of the project);
    the name prefix is the Terraform default's, whatever terraform.tfvars the checkout has."""

    def entry(cred_id: str) -> dict[str, Any]:
        return {
            "auth": {
                "auth_url": f"{openstack_stub.base}/identity/v3",
                "application_credential_id": cred_id,
                "application_credential_secret": APP_CRED_SECRET,
            },
            "auth_type": "v3applicationcredential",
            "region_name": REGION,
            "interface": "public",
            "identity_api_version": 3,
        }

    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        json.dumps(
            {
                "clouds": {
                    "stub": entry(APP_CRED_ID),
                    "stub_expired": entry(EXPIRED_CRED_ID),
                    "stub_restricted": entry(RESTRICTED_CRED_ID),
                    "stub_colleague": entry(COLLEAGUE_CRED_ID),
                }
            }
        )
    )
    home = tmp_path / "home"
    home.mkdir()
    return {
        "OS_CLIENT_CONFIG_FILE": str(clouds),
        "OS_CLIENT_SECURE_FILE": None,
        "OS_CLOUD": None,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "CHEXOPS_NAME_PREFIX": "chexops",
    }


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"--json must print exactly one line on stdout, got: {self.stdout!r}"
        return json.loads(lines[0])


def run_infra(args: list[str], env: dict[str, Any] | None = None) -> Outcome:
    """`chexops infra ARGS` in this process through the real entry point (`support.chexops`): a ChexopsError is its
    exit code and one message on stderr (test_main_cli_maps_errors checks the same as a child process)."""
    return Outcome(*chexops("infra", *args, **(env or {})))


@pytest.fixture()
def infra_cli():
    return run_infra
