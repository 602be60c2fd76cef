import pytest

from lumbar import schema


def test_label_columns_are_train_csv_order():
    assert len(schema.LABEL_COLUMNS) == 25
    assert schema.LABEL_COLUMNS[0] == "spinal_canal_stenosis_l1_l2"
    assert schema.LABEL_COLUMNS[5] == "left_neural_foraminal_narrowing_l1_l2"
    assert schema.LABEL_COLUMNS[-1] == "right_subarticular_stenosis_l5_s1"
    assert len(set(schema.LABEL_COLUMNS)) == 25


def test_row_id_round_trip_every_column():
    for j, col in enumerate(schema.LABEL_COLUMNS):
        cond, lv = col[:-6], col[-5:]
        rid = schema.row_id(4003253, cond, lv)
        assert rid == f"4003253_{col}"
        assert schema.parse_row_id(rid) == (4003253, cond, lv)
        assert schema.label_index(cond, lv) == j


def test_display_names_map_to_slugs():
    assert schema.row_id(1, "Left Neural Foraminal Narrowing", "L4/L5") == "1_left_neural_foraminal_narrowing_l4_l5"
    assert schema.label_index("Spinal Canal Stenosis", "L5/S1") == 4
    assert schema.severity_index("Severe") == 2
    assert schema.group_of("right_subarticular_stenosis_l1_l2") == "subarticular"
    assert schema.group_of("left_neural_foraminal_narrowing") == "foraminal"


@pytest.mark.parametrize("bad", ["abc_spinal_canal_stenosis_l1_l2", "1_spinal_canal_stenosis_l9_l2",
                                 "1_sideways_stenosis_l1_l2", "1_l1_l2"])
def test_bad_row_ids_are_rejected(bad):
    with pytest.raises(ValueError):
        schema.parse_row_id(bad)


def test_row_ids_study_major():
    ids = schema.row_ids([5, 6])
    assert len(ids) == 50 and ids[0].startswith("5_") and ids[25].startswith("6_")
