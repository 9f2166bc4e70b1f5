//! The borderless, kubectl-style tables of the read verbs: uppercase headers, two spaces between
//! columns, chosen columns right-aligned, no trailing spaces.
//!
//! Laid out here rather than by a table crate: `list` at 10,000 instances spent 70% of its CPU
//! (about 45 ms) in a general table builder's per-cell objects, for a layout that needs one pass
//! for the widths and one for the text. Widths are display widths (`unicode-width`), so a name
//! in CJK or with combining marks still lines up.

use unicode_width::UnicodeWidthStr;

/// Spaces after every column (trailing ones are trimmed from each line).
const GAP: usize = 2;

/// Renders `header` (uppercased) and `rows`; columns listed in `right_aligned` are aligned right.
/// A cell with line breaks takes as many lines as it has, the other cells of its row blank on
/// the extra lines. Lines left empty are dropped.
pub(super) fn render_table(
    header: &[&str],
    rows: Vec<Vec<String>>,
    right_aligned: &[usize],
) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_uppercase()).collect();
    let columns = rows.iter().map(Vec::len).chain([header.len()]).max();
    let columns = columns.unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            for line in cell.split('\n') {
                *width = (*width).max(line.width());
            }
        }
    }
    let mut text = String::with_capacity(
        (rows.len() + 1) * (widths.iter().sum::<usize>() + GAP * columns + 1),
    );
    for row in std::iter::once(&header).chain(&rows) {
        let height = row.iter().map(|c| c.split('\n').count()).max().unwrap_or(1);
        for n in 0..height {
            let start = text.len();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).and_then(|c| c.split('\n').nth(n)).unwrap_or("");
                let pad = width - cell.width();
                if right_aligned.contains(&i) {
                    push_spaces(&mut text, pad);
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    push_spaces(&mut text, pad);
                }
                push_spaces(&mut text, GAP);
            }
            let kept = text[start..].trim_end().len();
            text.truncate(start + kept);
            if kept > 0 {
                text.push('\n');
            }
        }
    }
    text
}

fn push_spaces(text: &mut String, n: usize) {
    text.extend(std::iter::repeat_n(' ', n));
}

#[cfg(test)]
mod tests {
    use super::render_table;

    fn rows(rows: &[&[&str]]) -> Vec<Vec<String>> {
        rows.iter()
            .map(|r| r.iter().map(|c| c.to_string()).collect())
            .collect()
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_plus_two_spaces() {
        let text = render_table(
            &["app", "index", "status"],
            rows(&[&["web", "0", "online"], &["api-server", "12", "stopped"]]),
            &[1],
        );
        assert_eq!(
            text,
            "APP         INDEX  STATUS\n\
             web             0  online\n\
             api-server     12  stopped\n"
        );
    }

    #[test]
    fn wide_characters_count_by_display_width_and_no_line_ends_in_spaces() {
        let text = render_table(&["name", "x"], rows(&[&["日本", "1"], &["ab", ""]]), &[]);
        assert_eq!(text, "NAME  X\n日本  1\nab\n");
    }

    #[test]
    fn a_cell_with_line_breaks_takes_several_lines_and_empty_lines_go() {
        let text = render_table(&["a", "b"], rows(&[&["x\ny", "1"], &["", ""]]), &[]);
        assert_eq!(text, "A  B\nx  1\ny\n");
    }

    #[test]
    fn short_rows_and_no_rows() {
        assert_eq!(render_table(&["a", "bb"], Vec::new(), &[]), "A  BB\n");
        assert_eq!(
            render_table(&["a", "b"], rows(&[&["long"]]), &[]),
            "A     B\nlong\n"
        );
    }
}
