from middleware.cli import main

main()
