"""The SDK wrapper: a fixed end user, persona admin helpers, and reranking per request.

    PERSONA_BASE_URL=http://127.0.0.1:8080/v1 PERSONA_APP_KEY=sk-my-app-key PERSONA_ADMIN_KEY=sk-admin \
        python examples/sdk_personas.py --user user-42 --tenant my-app --model gpt-4o-mini
"""

from __future__ import annotations

import argparse
import os

from middleware.sdk import PersonalizedOpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=os.environ.get("PERSONA_BASE_URL", "http://127.0.0.1:8080/v1"))
    parser.add_argument("--api-key", default=os.environ.get("PERSONA_APP_KEY", "no-key"))
    parser.add_argument("--admin-key", default=os.environ.get("PERSONA_ADMIN_KEY"))
    parser.add_argument("--tenant", default="default")
    parser.add_argument("--user", required=True)
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args()

    client = PersonalizedOpenAI(
        base_url=args.base_url, api_key=args.api_key, user=args.user, admin_key=args.admin_key, tenant=args.tenant
    )
    persona = client.personas.put(text="Prefers short answers with one concrete example.")
    print(f"stored persona version {persona.version}")

    reply = client.chat.completions.create(model=args.model, messages=[{"role": "user", "content": "Explain DNS."}])
    print("inject:", reply.choices[0].message.content)

    reranked = client.with_options(default_headers={"X-Persona-Mode": "rerank"}).chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": "Explain DNS."}]
    )
    print("rerank:", reranked.choices[0].message.content)

    for version in client.personas.versions():
        print(f"version {version.version}: {version.text_chars} characters, current={version.current}")


if __name__ == "__main__":
    main()
