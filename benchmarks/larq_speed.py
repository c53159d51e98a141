"""Training speed of the same binary ResNet-20 in Larq, the field's standard BNN library.

Runs in its own virtual environment (``make larq-venv``: larq 0.13.3, TensorFlow 2.16.1,
tf-keras 2.16.0), never beside the test suite. Two models, as onebit's ``resnet20`` with
method ``ste`` and ``fp`` (269,562 parameters at one input channel):

* binary: FP 3x3 stem + BN + hardtanh; 9 blocks, each two QuantConv2D 3x3 (``ste_sign``
  inputs and kernels, ``weight_clip``), each followed by BN, the shortcut added after every
  conv, then hardtanh (the IR-Net / ReCU structure); option-A downsampling (subsample + zero
  channels); global average pool, BN, Dense;
* fp: the same with Conv2D and ReLU in the standard block (conv-BN-ReLU-conv-BN + shortcut,
  ReLU).

Both train with SGD (lr 0.1, momentum 0.9) on synthetic Fashion-MNIST-shaped data (random
uint8 1x32x32, 10 classes, normalised), batch 128, through ``train_on_batch`` of a compiled
Keras model, in alternating rounds; each row is the median of its rounds. Threads: the
``--threads`` TensorFlow intra-op threads (inter-op 1).

    make larq-venv
    .venv-larq/bin/python benchmarks/larq_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # larq 0.13 needs Keras 2 (tf-keras)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(binary: bool, tf, lq):
    keras = tf.keras
    layers = keras.layers

    def conv(x, filters, stride):
        if binary:
            return lq.layers.QuantConv2D(
                filters,
                3,
                strides=stride,
                padding="same",
                use_bias=False,
                input_quantizer="ste_sign",
                kernel_quantizer="ste_sign",
                kernel_constraint="weight_clip",
            )(x)
        return layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)

    def act(x):
        if binary:
            return layers.Activation(lambda v: tf.clip_by_value(v, -1.0, 1.0))(x)
        return layers.ReLU()(x)

    def shortcut(x, filters):
        if x.shape[-1] == filters:
            return x
        pad = (filters - x.shape[-1]) // 2
        return layers.Lambda(
            lambda v: tf.pad(v[:, ::2, ::2, :], [[0, 0], [0, 0], [0, 0], [pad, pad]])
        )(x)

    inputs = keras.Input((32, 32, 1))
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = act(layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x))
    for i, filters in enumerate((16, 32, 64)):
        for j in range(3):
            stride = 2 if i > 0 and j == 0 else 1
            short = shortcut(x, filters)
            y = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(conv(x, filters, stride))
            if binary:  # a shortcut around every conv
                y = act(layers.Add()([y, short]))
                z = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(conv(y, filters, 1))
                x = act(layers.Add()([z, y]))
            else:
                z = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(conv(act(y), filters, 1))
                x = act(layers.Add()([z, short]))
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
    outputs = layers.Dense(10)(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra-op threads")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    import larq as lq
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    n, batch = 60_000 // 8, args.batch_size
    images = ((rng.integers(0, 256, (n, 32, 32, 1)) / 255 - 0.2860) / 0.3530).astype("float32")
    labels = rng.integers(0, 10, n).astype("int32")
    models = {"larq ste (binary)": build(True, tf, lq), "larq fp": build(False, tf, lq)}
    params = {name: m.count_params() for name, m in models.items()}
    position = {name: 0 for name in models}

    def run(name: str, steps: int) -> float:
        model, start = models[name], time.perf_counter()
        for _ in range(steps):
            lo = position[name] = (position[name] + batch) % (n - batch)
            model.train_on_batch(images[lo : lo + batch], labels[lo : lo + batch])
        return time.perf_counter() - start

    for name in models:
        run(name, args.warmup)
    times: dict[str, list[float]] = {name: [] for name in models}
    chunk = -(-args.steps // args.rounds)
    for _ in range(args.rounds):
        for name in models:
            times[name].append(run(name, chunk) / chunk)
    print(
        f"Larq {lq.__version__}, TensorFlow {tf.__version__}, {args.threads} intra-op threads, "
        f"batch {batch}; median of {args.rounds} alternating rounds of {chunk} steps"
    )
    print(f"| {'implementation':<40} | {'params':>8} | {'s/step':>8} | {'img/s':>7} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 10}|{'-' * 9}|")
    for name, per_step in times.items():
        step = statistics.median(per_step)
        print(f"| {name:<40} | {params[name]:>8,} | {step:8.4f} | {batch / step:7.0f} |")


if __name__ == "__main__":
    main()
