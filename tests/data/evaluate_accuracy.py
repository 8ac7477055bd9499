"""A local `evaluate` metric module (what `evaluate.load("accuracy")` fetches from the Hub), loadable offline."""

import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="accuracy",
            citation="",
            inputs_description="",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"accuracy": float(sum(p == r for p, r in zip(predictions, references)) / len(references))}
