from mtpforge.cli import main

main()
