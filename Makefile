.PHONY: serve test lint bench bootstrap

bootstrap:
	bash scripts/bootstrap.sh --test

serve:
	bash scripts/serve.sh $(ARGS)

test:
	bash scripts/test.sh $(ARGS)

lint: bootstrap
	.venv/bin/ruff check middleware tests scripts benchmarks examples
	.venv/bin/mypy
	.venv/bin/lint-imports

bench:
	bash scripts/bench.sh $(ARGS)
