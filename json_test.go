package redisservice

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type product struct {
	SKU   string   `json:"sku"`
	Price int      `json:"price"`
	Tags  []string `json:"tags"`
}

func TestJSON(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		in := product{SKU: "A-1", Price: 250, Tags: []string{"hot"}}
		ok, err := s.SetJSON(ctx, "p", in, WithTTL(time.Minute))
		require.NoError(t, err, "SetJSON")
		require.True(t, ok, "SetJSON")
		assert.Equal(t, `{"sku":"A-1","price":250,"tags":["hot"]}`, b.client.Get(ctx, b.raw("p")).Val(),
			"stored JSON; want plain JSON text")
		var out product
		ok, err = s.GetJSON(ctx, "p", &out)
		assert.NoError(t, err, "GetJSON")
		assert.True(t, ok, "GetJSON")
		assert.Equal(t, in.SKU, out.SKU, "GetJSON SKU")
		assert.Equal(t, in.Price, out.Price, "GetJSON Price")
		ok, err = s.GetJSON(ctx, "missing", &out)
		assert.NoError(t, err, "GetJSON(missing)")
		assert.False(t, ok, "GetJSON(missing)")

		b.client.Set(ctx, b.raw("bad"), "{not json", 0)
		b.client.Set(ctx, b.raw("str"), `"a string"`, 0)
		b.client.HSet(ctx, b.raw("hash"), "f", "v")
		for _, tt := range []struct {
			key  string
			want error
		}{{"bad", ErrDecode}, {"str", ErrDecode}} {
			var p product
			ok, err := s.GetJSON(ctx, tt.key, &p)
			assert.ErrorIs(t, err, tt.want, "GetJSON(%q)", tt.key)
			assert.False(t, ok, "GetJSON(%q)", tt.key)
		}
		var p product
		ok, err = s.GetJSON(ctx, "hash", &p)
		assert.ErrorContains(t, err, "WRONGTYPE", "GetJSON(hash)")
		assert.False(t, ok, "GetJSON(hash)")
		assert.True(t, s.IsConnected(), "IsConnected() after decode and WRONGTYPE errors")
	})
}
