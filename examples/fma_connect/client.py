"""A data holder's script written for the original FMA and its client, fma-connect 0.0.2.

Nothing here knows about the new service: it registers with ``fma_connect.WebClient`` (legacy
CLIENT-UUID auth), gets the latest model as JSON lists, trains, sends the update, waits for the
new aggregate and sends its validation results, the way the original FMA's examples did. The
only thing to change when moving to FMA is ``--url``.

    python client.py --url http://127.0.0.1:8000 --model-id 1 --client-index 0 --num-clients 2
"""

import argparse
import time

import numpy as np
from fma_connect import WebClient
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def load_local_data(client_index, num_clients, seed=0):
    """This client's share of the digits (split by label, so each client sees different digits)."""
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    mine = y_train % num_clients == client_index
    return x_train[mine], y_train[mine], x_val, y_val


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def train(weights, x, y, epochs, learning_rate=0.5, batch_size=32, seed=0):
    """Multinomial logistic regression, mini-batch SGD; weights are [W (64×10), b (10)]."""
    w, b = np.array(weights[0]), np.array(weights[1])
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            grad = softmax(x[batch] @ w + b)
            grad[np.arange(len(batch)), y[batch]] -= 1
            w -= learning_rate * x[batch].T @ grad / len(batch)
            b -= learning_rate * grad.mean(axis=0)
    return [w, b]


def evaluate(weights, x, y):
    predictions = (x @ np.array(weights[0]) + np.array(weights[1])).argmax(axis=1)
    return {"accuracy": float((predictions == y).mean()), "examples": len(y)}


def jsonify(weights):
    return [np.asarray(layer).tolist() for layer in weights]


def wait_for_latest_model(client, poll_seconds=0.5, timeout=300):
    """Poll until the service has a model newer than the one this client last saw."""
    deadline = time.time() + timeout
    model = client.check_for_latest_model()
    while model is None:
        if time.time() > deadline:
            raise TimeoutError("no new model from the service")
        time.sleep(poll_seconds)
        model = client.check_for_latest_model()
    return model


def main():
    parser = argparse.ArgumentParser(description="fma-connect data holder")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="url of the FMA service")
    parser.add_argument("--model-id", type=int, default=1, help="federated model id on the service")
    parser.add_argument("--client-index", type=int, default=0)
    parser.add_argument("--num-clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    x, y, x_val, y_val = load_local_data(args.client_index, args.num_clients)
    client = WebClient(federated_model_id=args.model_id, url=args.url)
    client.register()
    print(f"registered as {client.uuid} with {len(y)} examples", flush=True)

    model = wait_for_latest_model(client)
    weights, base_aggregate = model["values"], model["aggregate"]
    for round_index in range(args.rounds):
        weights = train(weights, x, y, args.epochs, seed=round_index)
        client.send_update(jsonify(weights), base_aggregate)
        model = wait_for_latest_model(client)
        weights, base_aggregate = model["values"], model["aggregate"]
        results = evaluate(weights, x_val, y_val)
        client.send_val_results(results, base_aggregate)
        print(
            f"round {round_index + 1}: aggregate {base_aggregate}, accuracy {results['accuracy']:.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
