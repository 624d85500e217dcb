"""The pipeline's stages, one module each: what a stage needs, when it is requested and the
glue that reads earlier results and calls the work in dynexport's other modules. A stage module
imports no other stage module; `pipeline.py` walks them in order."""
