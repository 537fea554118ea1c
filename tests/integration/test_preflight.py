"""``config --check`` runs exactly the validation ``simulate`` and ``train`` run before starting."""

import pytest

from fedprune.cli import main

BAD_CONFIGS = {
    "budget too small for the model": ('[model]\nname = "lenet5"\n[memory]\nbudget = "constant"\n'
                                       "budget-mb = 0.05\n", "needs"),
    "cifar10, no download, no data": ('[data]\ndataset = "cifar10"\ndownload = false\ndata-dir = "{empty}"\n',
                                      "cifar10"),
    "budget-mb = inf": ('[memory]\nbudget = "constant"\nbudget-mb = inf\n', "finite"),
    "budget-mb = nan": ('[memory]\nbudget = "constant"\nbudget-mb = nan\n', "finite"),
    "a budget list with inf": ('[memory]\nbudget = "constant"\n[fleet]\nnum-clients = 2\n'
                               'budgets-mb = "64, inf"\n', "finite"),
}


def _write(tmp_path, text):
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    path = tmp_path / "exp.toml"
    path.write_text(text.replace("{empty}", str(empty)))
    return path


def _one_error_line(capsys, needle):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert needle in err, err
    return err


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_check_refuses_what_train_and_simulate_refuse(case, tmp_path, capsys):
    text, needle = BAD_CONFIGS[case]
    path = _write(tmp_path, text)
    assert main(["config", "--check", str(path)]) == 2
    check_err = _one_error_line(capsys, needle)
    out = tmp_path / "out"
    assert main(["train", str(path), "--out", str(out)]) == 2
    assert _one_error_line(capsys, needle) == check_err
    assert main(["simulate", str(path), "--out", str(out)]) == 2
    assert _one_error_line(capsys, needle) == check_err
    assert not out.exists()  # nothing started, nothing left behind


def test_train_with_zero_epochs_is_refused_and_leaves_no_folder(tmp_path, capsys):
    path = _write(tmp_path, "")
    out = tmp_path / "out"
    assert main(["train", str(path), "--epochs", "0", "--out", str(out)]) == 2
    _one_error_line(capsys, "--epochs")
    assert not out.exists()


def test_a_good_config_passes(tmp_path, capsys):
    assert main(["config", "--check", str(_write(tmp_path, '[model]\nname = "lenet300"\n'))]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")
