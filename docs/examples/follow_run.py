#!/usr/bin/env python3
"""Triggers a run of a Gantry pipeline and follows it to its end, printing each transition.

    python3 -m pip install "gql[websockets]"
    python3 follow_run.py --url http://127.0.0.1:8080 --token "$GANTRY_TOKEN" \\
        --pipeline PIPELINE_ID --sha COMMIT [--ref refs/heads/main] [--idempotency-key KEY]

It speaks GraphQL over one WebSocket (`graphql-transport-ws`, the token in
`connection_init`): `triggerRun`, then the `runEvents` subscription, which replays the
run's events from its start and ends after its terminal event. When the connection
drops, it reconnects and resumes with `after: <last seq seen>`, so no transition is lost
or printed twice.

Exit status: 0 when the run succeeded, 1 when it failed or was cancelled, 2 when the
server refused a request (the error's `extensions.code` is printed).
"""

import argparse
import asyncio
import sys

from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportError, TransportQueryError
from gql.transport.websockets import WebsocketsTransport

TRIGGER = """
mutation Trigger($pipeline: ID!, $sha: String!, $ref: String!, $key: String) {
  triggerRun(input: {pipeline: $pipeline, sha: $sha, ref: $ref, idempotencyKey: $key}) {
    id number state tasks { id name }
  }
}
"""

EVENTS = """
subscription Follow($run: ID!, $after: String) {
  runEvents(run: $run, after: $after) { seq entity entityId task from to reason }
}
"""

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
RECONNECTS = 10


def transport(url: str, token: str) -> WebsocketsTransport:
    ws_url = url.rstrip("/").replace("http", "ws", 1) + "/graphql"
    return WebsocketsTransport(
        url=ws_url,
        init_payload={"Authorization": f"Bearer {token}"},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )


def describe(event: dict, names: dict) -> str:
    what = event["entity"]
    if what == "RUN":
        subject = "run"
    else:
        subject = names.get(event["task"], event["task"])
    before = event["from"] or "(new)"
    return f"{event['seq']:>6}  {what:<7} {subject:<24} {before} -> {event['to']}  ({event['reason']})"


async def follow(args: argparse.Namespace) -> int:
    async with Client(transport=transport(args.url, args.token)) as session:
        result = await session.execute(
            GraphQLRequest(
                TRIGGER,
                variable_values={
                    "pipeline": args.pipeline,
                    "sha": args.sha,
                    "ref": args.ref,
                    "key": args.idempotency_key,
                },
            )
        )
    run = result["triggerRun"]
    names = {t["id"]: t["name"] for t in run["tasks"]}
    print(f"run #{run['number']} {run['id']} is {run['state']}", flush=True)

    last_seq = None
    final = None
    failures = 0
    while final is None:
        request = GraphQLRequest(EVENTS, variable_values={"run": run["id"], "after": last_seq})
        try:
            async with Client(transport=transport(args.url, args.token)) as session:
                async for data in session.subscribe(request):
                    event = data["runEvents"]
                    last_seq = event["seq"]
                    print(describe(event, names), flush=True)
                    if event["entity"] == "RUN" and event["to"] in TERMINAL:
                        final = event["to"]
        except TransportQueryError:
            raise
        except (TransportError, OSError) as err:
            failures += 1
            if failures > RECONNECTS:
                raise
            print(f"connection lost ({err}); resuming after seq {last_seq}", file=sys.stderr)
            await asyncio.sleep(min(2**failures, 30))
    print(f"run #{run['number']} {final}", flush=True)
    return 0 if final == "SUCCEEDED" else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token", required=True, help="an API token with the write scope")
    parser.add_argument("--pipeline", required=True, help="the pipeline's id")
    parser.add_argument("--sha", required=True, help="the commit to build")
    parser.add_argument("--ref", default="refs/heads/main")
    parser.add_argument("--idempotency-key", help="the same key returns the same run")
    args = parser.parse_args()
    try:
        return asyncio.run(follow(args))
    except TransportQueryError as err:
        for e in err.errors or []:
            code = (e.get("extensions") or {}).get("code", "?")
            print(f"refused: {code}: {e.get('message')}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
