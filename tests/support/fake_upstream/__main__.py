from tests.support.fake_upstream.server import main

main()
