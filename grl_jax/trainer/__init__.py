"""The trainer: `loop.train_and_evaluate(config, workdir)` around one jit-compiled step.

* `setup.py`: model + objective + optimiser + mesh + jitted steps (`build`), init, warm start.
* `step.py`: the train and eval step functions and the frame normalisation.
* `data.py`: the data side (data_pipeline/builder.py) for this process.
* `preemption.py`: SIGTERM / SIGINT -> save and exit.
* `loop.py`: the loop: resume, log, evaluate on schedule, checkpoint, stop on a non-finite loss.
"""
