import sys

if sys.argv[1:2] == ["clusters"]:
    from index_builder.clusters import main

    sys.exit(main(sys.argv[2:]))
if sys.argv[1:2] == ["embed"]:
    from index_builder.embed import main

    sys.exit(main(sys.argv[2:]))
if sys.argv[1:2] == ["add"]:
    from index_builder.add import main

    sys.exit(main(sys.argv[2:]))
if sys.argv[1:2] == ["download"]:
    from index_builder.download import main

    sys.exit(main(sys.argv[2:]))

from index_builder.build import main  # noqa: E402

sys.exit(main())
