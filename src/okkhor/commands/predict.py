"""`okkhor predict`: checkpoints x TTA -> averaged softmax -> a Kaggle submission."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def command(
    checkpoints: List[Path] = typer.Argument(..., help="One or more checkpoints (e.g. one per fold), run "
                                                       "directories (their best.pt) or `okkhor cv` folders (every "
                                                       "fold's best.pt); their softmax outputs are averaged."),
    data: Path = typer.Option(..., "--data", help="Folder with test.csv and test_image_data_*.parquet."),
    out: Path = typer.Option(Path("submission.csv"), "--out", help="Submission CSV to write (row_id,target)."),
    tta: int = typer.Option(1, "--tta", help="Views per image, 1..8: 1 is the plain image; then shifts right/left/"
                                             "down/up by 3% of the side, zoom 0.92 and 1.08, a diagonal shift."),
    probs: Optional[Path] = typer.Option(None, "--probs", help="Also save the averaged probabilities, before any "
                                                               "prior correction (.npz: image_ids and one n x "
                                                               "classes array per target)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images read and predicted at a time."),
    prior_correction: bool = typer.Option(False, "--prior-correction/--no-prior-correction",
                                          help="Divide probabilities by the training class frequencies before the "
                                               "argmax (favours rare classes, for macro recall)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu or cuda."),
    route: bool = typer.Option(False, "--route/--no-route", help="An image whose grapheme head (model."
                                                                 "grapheme_head) is sure of a triple takes it; "
                                                                 "the others use the component heads."),
    route_threshold: float = typer.Option(0.5, "--route-threshold", help="With --route: the grapheme head's "
                                                                         "probability needed to take its triple."),
) -> None:
    """Predict the test images and write a submission with the rows and order of test.csv.

    Each checkpoint sees the images through its own preprocessing (its data.image_size and data.crop); the test
    parquet files are read in batches, so memory does not grow with the test set.

    Examples:
      okkhor predict runs/r1/checkpoints/best.pt --data data/ --out submission.csv
      okkhor predict runs/fold*/checkpoints/best.pt --data data/ --tta 4 --probs probs.npz
      okkhor predict best.pt --data data/ --prior-correction
      okkhor predict best.pt --data data/ --route
      okkhor predict runs/cv --data data/        (every fold of an `okkhor cv` run)
    """
    from okkhor.inference.predict import predict
    from okkhor.training.cv import checkpoints_of

    checkpoints = [ckpt for path in checkpoints for ckpt in checkpoints_of(path)]
    result = predict(checkpoints, data, out, tta=tta, probs=probs, batch_size=batch_size,
                     prior_correction=prior_correction, device=device, route=route,
                     route_threshold=route_threshold)
    routed = "" if result["routed"] is None else f", {result['routed']} routed to the grapheme head"
    typer.echo(f"wrote {result['out']}: {result['rows']} rows for {result['images']} images "
               f"({result['checkpoints']} checkpoint(s) x {result['tta']} view(s)"
               f"{', prior-corrected' if prior_correction else ''}{routed})")
    if result["probs"] is not None:
        typer.echo(f"wrote {result['probs']}")
