"""Fixtures of the Python tests: a layerbankd of its own in a temporary folder, stopped at the
end; paths of the build's binaries and the data."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

DAEMON = os.environ.get("LB_DAEMON", "")
WORKER = os.environ.get("LB_WORKER", "")
DATA = os.environ.get("LB_DATA", "")
SOURCE = os.environ.get("LB_SOURCE", "")


class Daemon:
    """layerbankd -f on a socket in its own folder; start() again after stop() on the same one."""

    def __init__(self, arena="64M"):
        self.dir = tempfile.mkdtemp(prefix="layerbank-pytest.")
        self.sock = os.path.join(self.dir, "lb.sock")
        self.arena, self.proc = arena, None
        self.start()

    def start(self):
        self.log = open(os.path.join(self.dir, "daemon.log"), "ab")
        self.proc = subprocess.Popen([DAEMON, "-f", "-s", self.sock, "--arena-size", self.arena,
                                      "--hugepages", "off", "--threads", "1"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(500):
            if os.path.exists(self.sock):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError("layerbankd did not start: " +
                           open(os.path.join(self.dir, "daemon.log")).read())

    def kill(self):
        """SIGKILL, as a crash would: no clean-up of its own."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.log.close()
        try:
            os.unlink(self.sock)
        except FileNotFoundError:
            pass

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
