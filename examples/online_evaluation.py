"""Run the blind own / other / baseline evaluation for a few users, from the SDK.

The operator creates a run; each user then gets three answers labelled A/B/C for a prompt (their own
persona, another user's persona, no persona, in a balanced hidden order) and picks one; the report
gives win rates with bootstrap CIs and sign tests, and a Figure-4-style chart.

    PERSONA_BASE_URL=http://127.0.0.1:8080/v1 PERSONA_APP_KEY=sk-my-app-key PERSONA_ADMIN_KEY=sk-admin \
        python examples/online_evaluation.py --tenant my-app --users alice bob --model gpt-4o-mini

Users need personas first (an induced one, or PUT /admin/users/{user}/persona). Without `--auto` the
script asks each user to choose in the terminal; with `--auto` it picks A every time (a smoke run).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from middleware.sdk import PersonalizedOpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=os.environ.get("PERSONA_BASE_URL", "http://127.0.0.1:8080/v1"))
    parser.add_argument("--api-key", default=os.environ.get("PERSONA_APP_KEY", "no-key"))
    parser.add_argument("--admin-key", default=os.environ.get("PERSONA_ADMIN_KEY"))
    parser.add_argument("--tenant", default="default")
    parser.add_argument("--users", nargs="+", required=True)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--prompt", action="append", help="prompt to ask each user (repeatable)")
    parser.add_argument("--plot", type=Path, default=Path("evaluation.png"))
    parser.add_argument("--auto", action="store_true", help="choose A without asking")
    args = parser.parse_args()
    prompts = args.prompt or ["Suggest a book for a long train ride.", "Explain what a mortgage is."]

    client = PersonalizedOpenAI(
        base_url=args.base_url, api_key=args.api_key, admin_key=args.admin_key, tenant=args.tenant
    )
    run = client.evaluations.create(users=args.users, model=args.model, name="example run")
    print(f"evaluation run {run['id']}")
    for user in args.users:
        for prompt in prompts:
            trial = client.evaluations.trial(run["id"], prompt=prompt, user=user)
            for answer in trial.answers:
                print(f"--- {user}, answer {answer.label} ---\n{answer.content}\n")
            choice = "A" if args.auto else input("best answer (A/B/C, tie, skip): ").strip() or "skip"
            client.evaluations.choose(run["id"], trial.id, choice, user=user)  # type: ignore[arg-type]

    report = client.evaluations.report(run["id"])
    pooled = report["pooled"]
    for condition in report["conditions"]:
        rate = pooled["win_rate"][condition]
        print(f"{condition:>9}: {pooled['wins'][condition]} wins, rate {rate['rate']}, CI [{rate['ci_low']}, {rate['ci_high']}]")
    print(f"own vs baseline: p = {pooled['tests']['own_vs_baseline']['p_value']}")
    args.plot.write_bytes(client.evaluations.report_png(run["id"]))
    print(f"chart written to {args.plot}")


if __name__ == "__main__":
    main()
