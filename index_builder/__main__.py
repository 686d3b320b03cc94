"""``python -m index_builder [VERB] ...``: one module per verb, registered as ``memlab.cli`` registers its
own; without a verb, the build (``index_builder.build``)."""
import importlib
import sys

VERBS = {
    "build": "index_builder.build",        # the default: index images, shards or embeddings
    "download": "index_builder.download",  # fetch a URL listing into webdataset shards (img2dataset)
    "embed": "index_builder.embed",        # embed shards on one machine or a Ray cluster
    "add": "index_builder.add",            # add embeddings or shards to an on-disk index
    "clusters": "index_builder.clusters",  # keyword views of an index or world
    "agreement": "index_builder.agreement",  # calibrate an older index's partial-copy threshold again
    "captions": "index_builder.captions",  # keep the captions' CLIP text vectors in an index (caption search)
    "words": "index_builder.words",        # keep an older index's caption words (word search, keyword rows)
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = argv[0] if argv and argv[0] in VERBS else "build"
    rest = argv[1:] if argv and argv[0] in VERBS else argv
    return importlib.import_module(VERBS[verb]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
