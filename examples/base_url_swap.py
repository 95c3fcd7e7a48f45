"""The whole integration: point the official OpenAI SDK at the proxy and name the end user.

    PERSONA_BASE_URL=http://127.0.0.1:8080/v1 PERSONA_APP_KEY=sk-my-app-key \
        python examples/base_url_swap.py --user user-42 --model gpt-4o-mini
"""

from __future__ import annotations

import argparse
import os

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=os.environ.get("PERSONA_BASE_URL", "http://127.0.0.1:8080/v1"))
    parser.add_argument("--api-key", default=os.environ.get("PERSONA_APP_KEY", "no-key"))
    parser.add_argument("--user", required=True)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--prompt", default="Suggest a weekend activity.")
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)  # the only change an app makes
    raw = client.chat.completions.with_raw_response.create(
        model=args.model,
        messages=[{"role": "system", "content": "You are a friendly assistant."}, {"role": "user", "content": args.prompt}],
        user=args.user,
    )
    completion = raw.parse()
    print(completion.choices[0].message.content)
    print(f"[persona version: {raw.headers.get('x-persona-version')}, "
          f"proxy overhead: {raw.headers.get('x-persona-overhead-ms')} ms]")

    stream = client.chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": args.prompt}], user=args.user, stream=True
    )
    print("".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))


if __name__ == "__main__":
    main()
