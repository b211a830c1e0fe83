//! Locating the target token and its non-target comparison token in a sentence: the notebook's
//! design (first occurrence, one token), built on [`crate::analysis::select`].

use super::select::{find_occurrences, non_target_position, Occurrence};
use super::AnalysisError;

/// The notebook's non-target: the token just before the target (`targidx - 1`).
pub const DEFAULT_NON_TARGET_OFFSET: i32 = -1;

/// Token positions (0-based, within the sentence's real tokens) used for one sentence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Positions {
    /// Position of the first occurrence of the target token.
    pub target: usize,
    /// Position of the comparison token: `target + offset`.
    pub non_target: usize,
}

/// Finds the target and non-target positions of sentence number `sentence` (used only in
/// errors) with token ids `ids` (real tokens only, no padding).
///
/// The target position is the first occurrence of `target` in `ids` (the notebook's
/// `list.index`); the non-target position is `target position + offset`.
///
/// # Errors
/// * [`AnalysisError::TargetNotFound`] if `target` does not occur in `ids`;
/// * [`AnalysisError::NonTargetIsTarget`] if `offset == 0`;
/// * [`AnalysisError::NonTargetOutOfRange`] if `target position + offset` is negative or
///   not below `ids.len()` (the notebook silently wrapped `-1` to the last token, padding
///   included, when the target was the first token).
pub fn locate(sentence: usize, ids: &[u32], target: u32, offset: i32) -> Result<Positions, AnalysisError> {
    let word = find_occurrences(sentence, ids, &[target], Occurrence::First)?[0];
    let non_target = non_target_position(sentence, ids.len(), word, offset)?;
    Ok(Positions { target: word.start, non_target })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HER: u32 = 607;

    #[test]
    fn first_occurrence_and_default_offset() {
        // "I saw her at the market." with ' her' at position 2.
        let ids = [40, 2497, HER, 379, 262, 1910, 13];
        assert_eq!(locate(0, &ids, HER, DEFAULT_NON_TARGET_OFFSET).unwrap(), Positions { target: 2, non_target: 1 });
        // First occurrence wins.
        let twice = [1, HER, 2, HER];
        assert_eq!(locate(3, &twice, HER, -1).unwrap().target, 1);
        // Positive offsets: the token after the target.
        assert_eq!(locate(0, &ids, HER, 2).unwrap(), Positions { target: 2, non_target: 4 });
        // Last token as non-target is in range.
        assert_eq!(locate(0, &ids, HER, 4).unwrap().non_target, 6);
    }

    #[test]
    fn errors_name_the_sentence() {
        let ids = [HER, 5, 6];
        assert_eq!(locate(7, &[1, 2, 3], HER, -1), Err(AnalysisError::TargetNotFound { sentence: 7, target: HER }));
        assert_eq!(locate(4, &[], HER, -1), Err(AnalysisError::TargetNotFound { sentence: 4, target: HER }));
        // Target is the first token: the notebook's `targidx - 1` would wrap to -1.
        assert_eq!(
            locate(5, &ids, HER, -1),
            Err(AnalysisError::NonTargetOutOfRange { sentence: 5, position: -1, num_tokens: 3 })
        );
        assert_eq!(
            locate(6, &ids, HER, 3),
            Err(AnalysisError::NonTargetOutOfRange { sentence: 6, position: 3, num_tokens: 3 })
        );
        assert_eq!(locate(8, &ids, HER, 0), Err(AnalysisError::NonTargetIsTarget { sentence: 8 }));
        // Extreme offsets do not overflow.
        assert!(matches!(locate(9, &ids, HER, i32::MIN), Err(AnalysisError::NonTargetOutOfRange { sentence: 9, .. })));
        assert!(matches!(locate(9, &ids, HER, i32::MAX), Err(AnalysisError::NonTargetOutOfRange { sentence: 9, .. })));
    }
}
