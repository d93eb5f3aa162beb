from ray_app.cli import main

main()
