"""Run a built bundle the way a user would: the self-test, a `generate`, and one
request to `serve`. Used by `make bundle`; exits non-zero at the first failure.

    python packaging/check_bundle.py dist/nibble/nibble
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time

# What it asks of the bundle (tests/faults/test_bundle.py parses them with the CLI's parser).
GENERATE = ["generate", "default", "--quant", "nf4", "--greedy",
            "--max-new-tokens", "16", "--prompt", "What is the capital of France?"]  # fmt: skip
SERVE = ["serve", "default", "--quant", "nf4"]  # and --port, a free one


def step(name: str, command: list[str], timeout: float = 900) -> str:
    print(f"== {name}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    print(done.stdout + done.stderr, end="", flush=True)
    print(f"== {name}: exit {done.returncode} in {time.monotonic() - started:.0f} s")
    if done.returncode != 0:
        sys.exit(f"bundle check failed at {name}")
    return done.stdout


def served_request(binary: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [binary, *SERVE, "--port", str(port)]
    print(f"== serve: {' '.join(command)}", flush=True)
    started = time.monotonic()
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # "Serving … at URL" once it listens
        if not line.startswith("Serving"):
            sys.exit(f"bundle check failed at serve: {line!r}")
        body = json.dumps(
            {
                "model": "default",
                "messages": [{"role": "user", "content": "Capital of France?"}],
                "max_tokens": 16,
                "temperature": 0,
            }
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request(
            "POST",
            "/v1/chat/completions",
            body,
            {"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        answer = json.loads(response.read())
        print(json.dumps(answer, indent=2))
        if response.status != 200:
            sys.exit("bundle check failed at serve: the request was refused")
    finally:
        server.terminate()
        server.wait(60)
    print(f"== serve: one request answered in {time.monotonic() - started:.0f} s")


def main() -> None:
    binary = sys.argv[1] if len(sys.argv) > 1 else "dist/nibble/nibble"
    step("self-test", [binary, "--self-test"])
    out = step("generate", [binary, *GENERATE])
    if "paris" not in out.lower():
        sys.exit("bundle check failed at generate: no Paris in the answer")
    served_request(binary)
    print("bundle check passed")


if __name__ == "__main__":
    main()
