import pytest

from strokessl.cli import main


@pytest.mark.parametrize("command", [[], ["synth"], ["validate"], ["pretrain"], ["finetune"], ["predict"]])
def test_help_exits_zero(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: strokessl" in capsys.readouterr().out


def test_validate_good_cohort_prints_summary(small_cohort, capsys):
    assert main(["validate", str(small_cohort)]) == 0
    out = capsys.readouterr().out
    assert "subjects: 24" in out and "OK: the cohort is usable." in out


def test_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "absent.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("strokessl validate: error:") and "does not exist" in err


def test_bad_cohort_exits_2_after_listing_problems(small_cohort, capsys):
    text = small_cohort.with_name("cohort.csv").read_text().replace("img/s03.nii.gz", "img/gone.nii.gz")
    small_cohort.with_name("cohort.csv").write_text(text)
    assert main(["validate", str(small_cohort)]) == 2
    captured = capsys.readouterr()
    assert "subject s03, column 'flair'" in captured.out
    assert "1 error(s)" in captured.err


def test_validate_names_every_misspelt_section_key_at_once(small_cohort, tmp_path, capsys):
    import yaml

    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"cohort": str(small_cohort), "pretrain": {"epoch": 3}, "finetune": {"epoch": 3}}))
    assert main(["validate", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "unknown config key 'finetune.epoch'" in err and "unknown config key 'pretrain.epoch'" in err
