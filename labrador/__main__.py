from labrador.cli.main import main

main()
