package operators

// UUID is a user id in its 16-byte binary form.
type UUID [16]byte

// ParseUUID accepts the canonical form (8-4-4-4-12 hex digits with dashes),
// the same in upper or mixed case, or 32 hex digits without dashes. All of
// them denote the same user.
func ParseUUID(s []byte) (u UUID, ok bool) {
	switch len(s) {
	case 36:
		if s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
			return u, false
		}
		j := 0
		for i := 0; i < 36; {
			if i == 8 || i == 13 || i == 18 || i == 23 {
				i++
				continue
			}
			hi, lo := unhex(s[i]), unhex(s[i+1])
			if hi|lo > 15 {
				return u, false
			}
			u[j] = hi<<4 | lo
			j++
			i += 2
		}
		return u, true
	case 32:
		for j := 0; j < 16; j++ {
			hi, lo := unhex(s[2*j]), unhex(s[2*j+1])
			if hi|lo > 15 {
				return u, false
			}
			u[j] = hi<<4 | lo
		}
		return u, true
	}
	return u, false
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10
	}
	return 255
}

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
