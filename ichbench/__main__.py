from ichbench.cli.app import main

main()
