"""Real nats-server processes for the tests: clusters of one to three nodes, and gateways between
clusters (regions). Each node gets its own ports and log; `kill` and `start` model a node's death
and return."""
import json
import os
import signal
import subprocess
import urllib.request

from conftest import free_port, wait_until


class NatsCluster:
    def __init__(self, directory, name="A", nodes=3, gateway=False, extra=""):
        self.directory, self.name, self.extra = directory, name, extra
        os.makedirs(directory, exist_ok=True)
        self.client = [free_port() for _ in range(nodes)]
        self.route = [free_port() for _ in range(nodes)]
        self.monitor = [free_port() for _ in range(nodes)]
        self.gateway_port = [free_port() for _ in range(nodes)] if gateway else []
        self.remotes = []  # (name, [gateway urls]) of other clusters
        self.procs = [None] * nodes

    @property
    def urls(self):
        return [f"nats://127.0.0.1:{p}" for p in self.client]

    def join(self, other):
        """Gateways both ways between this cluster and `other` (set before `start`)."""
        self.remotes.append((other.name, [f"nats://127.0.0.1:{p}" for p in other.gateway_port]))
        other.remotes.append((self.name, [f"nats://127.0.0.1:{p}" for p in self.gateway_port]))

    def config(self, i):
        routes = ", ".join(f'"nats://127.0.0.1:{p}"' for j, p in enumerate(self.route) if j != i)
        text = f"""
server_name: {self.name.lower()}{i}
listen: 127.0.0.1:{self.client[i]}
http: 127.0.0.1:{self.monitor[i]}
{self.extra}
"""
        if len(self.route) > 1:
            text += f"cluster {{ name: {self.name}, listen: 127.0.0.1:{self.route[i]}, routes: [{routes}] }}\n"
        if self.gateway_port:
            gws = ", ".join(f'{{name: {n}, urls: [{", ".join(chr(34) + u + chr(34) for u in us)}]}}' for n, us in self.remotes)
            text += f"gateway {{ name: {self.name}, listen: 127.0.0.1:{self.gateway_port[i]}, gateways: [{gws}] }}\n"
        return text

    def start(self, i=None):
        for n in ([i] if i is not None else range(len(self.client))):
            path = os.path.join(self.directory, f"{self.name}{n}.conf")
            with open(path, "w") as f:
                f.write(self.config(n))
            log = open(os.path.join(self.directory, f"{self.name}{n}.log"), "a")
            self.procs[n] = subprocess.Popen(["nats-server", "-c", path], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for n in ([i] if i is not None else range(len(self.client))):
            wait_until(lambda: self.varz(n) is not None, timeout=10, ignore=(OSError,), what=lambda: self.log(n))
        return self

    def varz(self, i, page="varz"):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor[i]}/{page}", timeout=1) as r:
            return json.loads(r.read())

    def wait_formed(self, gateways=0):
        """Every live node routes to every other live node, and has its outbound gateways."""
        live = [i for i, p in enumerate(self.procs) if p and p.poll() is None]

        def formed():
            for i in live:
                if len(live) > 1 and self.varz(i, "routez")["num_routes"] < len(live) - 1:
                    return False
                if gateways and len(self.varz(i, "gatewayz").get("outbound_gateways", {})) < gateways:
                    return False
            return True
        wait_until(formed, timeout=15, ignore=(OSError,), what="NATS cluster not formed")

    def kill(self, i):
        p = self.procs[i]
        if p and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        self.procs[i] = None

    def stop(self):
        for i in range(len(self.procs)):
            self.kill(i)

    def log(self, i):
        with open(os.path.join(self.directory, f"{self.name}{i}.log")) as f:
            return f.read()
