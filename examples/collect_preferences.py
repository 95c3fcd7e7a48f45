"""Collect one user's preferences from the terminal, as the /ui page does in a browser.

For each prompt the proxy generates four answers at once (instruction as system vs assistant
message x temperature 1.0 / 0.1); you pick the best and the worst and say why; only the best answer
is kept in the conversation. Run the proxy first (`persona serve`), then:

    python examples/collect_preferences.py --user alice --model gpt-4o-mini \
        --instruction "Summarize the post in two sentences." --prompt "POST: ..."

`--auto` picks best=1 and worst=last without asking (for smoke tests).
"""

from __future__ import annotations

import argparse
import os
import uuid

from middleware.sdk import PersonalizedOpenAI


def ask_index(question: str, valid: list[int]) -> int:
    while True:
        answer = input(f"{question} {[i + 1 for i in valid]}: ").strip()
        if answer.isdigit() and int(answer) - 1 in valid:
            return int(answer) - 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", default=os.environ.get("PERSONA_BASE_URL", "http://127.0.0.1:8080/v1"))
    parser.add_argument("--api-key", default=os.environ.get("PERSONA_APP_KEY"))
    parser.add_argument("--user", required=True)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--instruction", default=None, help="the app's instruction (system message)")
    parser.add_argument("--prompt", action="append", help="a prompt; repeat for several turns")
    parser.add_argument("--auto", action="store_true", help="judge without asking")
    args = parser.parse_args()

    client = PersonalizedOpenAI(base_url=args.base_url, api_key=args.api_key, user=args.user)
    session = uuid.uuid4().hex
    prompts = list(args.prompt or [])
    first = True
    while True:
        prompt = prompts.pop(0) if prompts else (None if args.auto else input("\nPrompt (empty to stop): "))
        if not prompt:
            break
        messages = [{"role": "user", "content": prompt}]
        if first and args.instruction:
            messages.insert(0, {"role": "system", "content": args.instruction})
        first = False
        comparison = client.comparisons.create(model=args.model, messages=messages, session_id=session)
        answered = [c.index for c in comparison.candidates if c.ok]
        for c in comparison.candidates:
            print(f"\n--- answer {c.index + 1} ({c.variant}) ---")
            print(c.content if c.ok else f"[failed: {(c.error or {}).get('message')}]")
        if args.auto:
            best, worst, rationale = answered[0], answered[-1], "picked automatically"
        else:
            best = ask_index("\nBest answer", answered)
            worst = ask_index("Worst answer", [i for i in answered if i != best])
            rationale = input("Why? ")
        result = client.comparisons.judge(comparison.id, best=best, worst=worst, rationale=rationale)
        print(f"\nstored the judgement and {result.pairs_added} preference pairs")


if __name__ == "__main__":
    main()
