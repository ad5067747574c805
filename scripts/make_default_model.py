"""Rebuild the embedded default model: a digit classifier trained on scikit-learn's bundled 8x8 digits.

    pip install -e '.[default-model]' && python scripts/make_default_model.py

Writes inference_server/default_repository/digits/1/model.onnx (committed; the server never imports
scikit-learn). Input `pixels` FP32 [N, 64] (values 0-16, row-major 8x8); outputs `label` INT64 [N] and
`probabilities` FP32 [N, 10]. Training is deterministic (lbfgs, fixed split), so reruns give the same
predictions. The README's example digit is test sample 0 of the same split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

OUT = Path(__file__).resolve().parents[1] / "inference_server" / "default_repository" / "digits" / "1" / "model.onnx"


def main() -> None:
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data.astype(np.float32), digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    clf = LogisticRegression(C=0.01, max_iter=5000).fit(x_train, y_train)
    accuracy = float((clf.predict(x_test) == y_test).mean())
    onx = to_onnx(clf, initial_types=[("pixels", FloatTensorType([None, 64]))],
                  options={id(clf): {"zipmap": False}}, target_opset=17)
    onx.doc_string = f"LogisticRegression on sklearn digits; held-out accuracy {accuracy:.4f}"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(onx.SerializeToString())
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); held-out accuracy {accuracy:.4f}")
    print(f"test sample 0 is a {y_test[0]}:", x_test[0].astype(int).reshape(8, 8).tolist())


if __name__ == "__main__":
    main()
