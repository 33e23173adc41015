package operators

// UUID is a user id in its 16-byte binary form.
type UUID [16]byte

// ParseUUID accepts the canonical form (8-4-4-4-12 hex digits with dashes),
// the same in upper or mixed case, or 32 hex digits without dashes. All of
// them denote the same user. On failure u is the zero UUID.
func ParseUUID(s []byte) (u UUID, ok bool) {
	ok = parseUUID(&u, s)
	return u, ok
}

// parseUUID is ParseUUID writing to *u, which saves Decoder a copy.
func parseUUID(u *UUID, s []byte) bool {
	if len(s) != 36 && len(s) != 32 {
		*u = UUID{}
		return false
	}
	if len(s) == 36 && (s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-') {
		*u = UUID{}
		return false
	}
	// Every byte of u is decoded unconditionally, with a table lookup per
	// digit; bad collects the pairs' values or'ed together, so that one
	// test at the end (a non-digit sets a bit above the low 8) replaces a
	// branch per digit.
	var bad uint16
	pair := func(i int) byte {
		v := hexVal[s[i]]<<4 | hexVal[s[i+1]]
		bad |= v
		return byte(v)
	}
	if len(s) == 36 {
		// Unrolled: constant indexes into s, whose length is known, need
		// no bounds checks.
		u[0], u[1], u[2], u[3] = pair(0), pair(2), pair(4), pair(6)
		u[4], u[5], u[6], u[7] = pair(9), pair(11), pair(14), pair(16)
		u[8], u[9], u[10], u[11] = pair(19), pair(21), pair(24), pair(26)
		u[12], u[13], u[14], u[15] = pair(28), pair(30), pair(32), pair(34)
	} else {
		for j := range u {
			u[j] = pair(2 * j)
		}
	}
	if bad > 0xff {
		*u = UUID{}
		return false
	}
	return true
}

// hexVal maps a byte to its value as a hex digit, or to 0x100 when it is
// not one.
var hexVal = func() (t [256]uint16) {
	for c := range t {
		switch {
		case c >= '0' && c <= '9':
			t[c] = uint16(c - '0')
		case c >= 'a' && c <= 'f':
			t[c] = uint16(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			t[c] = uint16(c - 'A' + 10)
		default:
			t[c] = 0x100
		}
	}
	return t
}()

const hexDigits = "0123456789abcdef"

// AppendCanonical appends the canonical lower-case dashed form of u.
func (u *UUID) AppendCanonical(dst []byte) []byte {
	for i, b := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst = append(dst, '-')
		}
		dst = append(dst, hexDigits[b>>4], hexDigits[b&15])
	}
	return dst
}

// String returns the canonical form.
func (u UUID) String() string { return string(u.AppendCanonical(make([]byte, 0, 36))) }

// MaxKeyGroups is the number of key groups state is split into. It is fixed
// for the life of a state directory: a key group is the unit in which state
// can be moved between owners without rewriting keys.
const MaxKeyGroups = 4096

// KeyGroup returns the key group of u: a 64-bit mix of its bytes modulo
// MaxKeyGroups. Mixing matters because time-ordered uuids (v1, v7) have
// predictable leading bytes.
func (u *UUID) KeyGroup() uint16 {
	var h uint64 = 0x9e3779b97f4a7c15
	for i := 0; i < 16; i += 8 {
		v := uint64(u[i])<<56 | uint64(u[i+1])<<48 | uint64(u[i+2])<<40 | uint64(u[i+3])<<32 |
			uint64(u[i+4])<<24 | uint64(u[i+5])<<16 | uint64(u[i+6])<<8 | uint64(u[i+7])
		h ^= v
		h *= 0xff51afd7ed558ccd
		h ^= h >> 33
	}
	return uint16(h % MaxKeyGroups)
}
