package bench

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// BenchmarkDecode compares the in-process cost of decoding one cached
// value: JSON, which Cache stores for other clients to read, against
// msgpack, which go-redis/cache stores. It needs no server.
func BenchmarkDecode(b *testing.B) {
	d := newDoc()
	js, err := json.Marshal(d)
	require.NoError(b, err)
	mp, err := msgpack.Marshal(d)
	require.NoError(b, err)
	b.Run("impl=json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v doc
			if err := json.Unmarshal(js, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("impl=msgpack", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v doc
			if err := msgpack.Unmarshal(mp, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
}
