package lite_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/runtime/protoimpl"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"mesh/xdsclient/internal/lite"
	"mesh/xdsclient/internal/lite/registry"

	// Envoy's own types, which every lite type is checked against.
	_ "mesh/xdsclient/internal/lite/gen/envoytypes"
)

// liteTypes lists every type package registry makes, by reading its source.
func liteTypes(t *testing.T) []protoreflect.FullName {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("registry", "types.go"))
	if err != nil {
		t.Fatal(err)
	}
	var out []protoreflect.FullName
	for _, line := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), `case "type.googleapis.com/`); ok {
			out = append(out, protoreflect.FullName(strings.TrimSuffix(rest, `":`)))
		}
	}
	if len(out) < 50 {
		t.Fatalf("registry lists %d types", len(out))
	}
	return out
}

// filler sets random values in messages of Envoy's generated types.
type filler struct {
	r *rand.Rand
	// only, when set, limits message fields to these types and protobuf's
	// own (google.protobuf.*).
	only map[protoreflect.FullName]bool
}

func (f filler) skips(fd protoreflect.FieldDescriptor) bool {
	if fd.IsMap() {
		fd = fd.MapValue()
	}
	md := fd.Message()
	if f.only == nil || md == nil {
		return false
	}
	if md.FullName() == "google.protobuf.Any" {
		return true // protojson cannot write an Any of a made-up type
	}
	return !f.only[md.FullName()] && md.ParentFile().Package() != "google.protobuf"
}

func (f filler) fill(m protoreflect.Message, depth int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if f.r.IntN(3) == 0 || f.skips(fd) {
			continue
		}
		if od := fd.ContainingOneof(); od != nil && m.WhichOneof(od) != nil {
			continue
		}
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			for range f.r.IntN(3) {
				k := f.scalar(fd.MapKey()).MapKey()
				if fd.MapValue().Message() != nil {
					if depth > 3 {
						continue
					}
					v := mp.NewValue()
					f.fill(v.Message(), depth+1)
					mp.Set(k, v)
				} else {
					mp.Set(k, f.scalar(fd.MapValue()))
				}
			}
		case fd.IsList():
			l := m.Mutable(fd).List()
			for range f.r.IntN(3) {
				if fd.Message() != nil {
					if depth > 3 {
						continue
					}
					v := l.NewElement()
					f.fill(v.Message(), depth+1)
					l.Append(v)
				} else {
					l.Append(f.scalar(fd))
				}
			}
		case fd.Message() != nil:
			if depth > 3 {
				continue
			}
			if fd.Message().FullName() == "google.protobuf.Any" {
				m.Set(fd, protoreflect.ValueOfMessage((&anypb.Any{TypeUrl: "type.googleapis.com/x." + strconv.Itoa(f.r.IntN(9)), Value: []byte{8, byte(f.r.IntN(100))}}).ProtoReflect()))
				continue
			}
			f.fill(m.Mutable(fd).Message(), depth+1)
		default:
			m.Set(fd, f.scalar(fd))
		}
	}
}

func (f filler) scalar(fd protoreflect.FieldDescriptor) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(f.r.IntN(2) == 0)
	case protoreflect.EnumKind:
		vals := fd.Enum().Values()
		if f.r.IntN(5) == 0 {
			return protoreflect.ValueOfEnum(protoreflect.EnumNumber(f.r.Int32N(1000)))
		}
		return protoreflect.ValueOfEnum(vals.Get(f.r.IntN(vals.Len())).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(f.r.Uint32()))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(f.r.Uint32())
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(int64(f.r.Uint64()))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(f.r.Uint64())
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(f.r.Float32() * 100)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(f.r.NormFloat64())
	case protoreflect.StringKind:
		return protoreflect.ValueOfString([]string{"", "a", "héllo", "/admin", strconv.Itoa(f.r.IntN(1e6))}[f.r.IntN(5)])
	case protoreflect.BytesKind:
		b := make([]byte, f.r.IntN(4))
		for i := range b {
			b[i] = byte(f.r.Uint32())
		}
		return protoreflect.ValueOfBytes(b)
	}
	panic("kind " + fd.Kind().String())
}

// goName is the name protoc-gen-go gave fd's field (a oneof member's
// wrapper field for a member), which the lite type's getter repeats.
func goName(t *testing.T, mt protoreflect.MessageType, fd protoreflect.FieldDescriptor) string {
	rt := reflect.TypeOf(mt.Zero().Interface()).Elem()
	types := []reflect.Type{rt}
	if mi, ok := mt.(*protoimpl.MessageInfo); ok {
		for _, w := range mi.OneofWrappers {
			types = append(types, reflect.TypeOf(w).Elem())
		}
	}
	for _, ty := range types {
		for i := range ty.NumField() {
			parts := strings.Split(ty.Field(i).Tag.Get("protobuf"), ",")
			if len(parts) > 1 && parts[1] == strconv.Itoa(int(fd.Number())) {
				return ty.Field(i).Name
			}
		}
	}
	t.Fatalf("no Go field for %s", fd.FullName())
	return ""
}

// same fails t unless lm, a lite message, holds what pm holds.
func same(t *testing.T, path string, pm protoreflect.Message, lm lite.Message) {
	t.Helper()
	var want []protoreflect.FieldDescriptor
	pm.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		want = append(want, fd)
		return true
	})
	var got []lite.Field
	lm.RangeSet(func(f lite.Field) bool {
		got = append(got, f)
		return true
	})
	// protobuf-go's Range does not promise an order: compare by number.
	sort.Slice(want, func(i, j int) bool { return want[i].Number() < want[j].Number() })
	byName := map[string]protoreflect.FieldNumber{}
	for i := range pm.Descriptor().Fields().Len() {
		fd := pm.Descriptor().Fields().Get(i)
		byName[string(fd.Name())] = fd.Number()
	}
	sort.SliceStable(got, func(i, j int) bool { return byName[got[i].Name] < byName[got[j].Name] })
	if len(got) != len(want) {
		var gn, wn []string
		for _, f := range got {
			gn = append(gn, f.Name)
		}
		for _, fd := range want {
			wn = append(wn, string(fd.Name()))
		}
		t.Fatalf("%s: lite sets %v, protobuf-go %v", path, gn, wn)
	}
	for i, fd := range want {
		if got[i].Name != string(fd.Name()) {
			t.Fatalf("%s: field %d is %s in lite, %s in protobuf-go", path, i, got[i].Name, fd.Name())
		}
		getter := reflect.ValueOf(lm).MethodByName("Get" + goName(t, pm.Type(), fd))
		if !getter.IsValid() {
			t.Fatalf("%s: lite type %T has no getter for %s", path, lm, fd.Name())
		}
		sameValue(t, path+"."+string(fd.Name()), fd, pm.Get(fd), getter.Call(nil)[0])
	}
}

func sameValue(t *testing.T, path string, fd protoreflect.FieldDescriptor, pv protoreflect.Value, lv reflect.Value) {
	t.Helper()
	switch {
	case fd.IsList():
		l := pv.List()
		if lv.Len() != l.Len() {
			t.Fatalf("%s: %d elements in lite, %d in protobuf-go", path, lv.Len(), l.Len())
		}
		for i := range l.Len() {
			sameOne(t, path+"["+strconv.Itoa(i)+"]", fd, l.Get(i), lv.Index(i))
		}
	case fd.IsMap():
		mp := pv.Map()
		if lv.Len() != mp.Len() {
			t.Fatalf("%s: %d entries in lite, %d in protobuf-go", path, lv.Len(), mp.Len())
		}
		mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
			lk := reflect.ValueOf(k.Interface()).Convert(lv.Type().Key())
			e := lv.MapIndex(lk)
			if !e.IsValid() {
				t.Fatalf("%s: key %v missing in lite", path, k)
			}
			sameOne(t, path+"["+k.String()+"]", fd.MapValue(), v, e)
			return true
		})
	default:
		sameOne(t, path, fd, pv, lv)
	}
}

func sameOne(t *testing.T, path string, fd protoreflect.FieldDescriptor, pv protoreflect.Value, lv reflect.Value) {
	t.Helper()
	if fd.Message() == nil {
		var want any = pv.Interface()
		if fd.Kind() == protoreflect.EnumKind {
			want = int64(pv.Enum())
			if lv.Int() != want.(int64) {
				t.Fatalf("%s: lite %v, protobuf-go %v", path, lv.Int(), want)
			}
			return
		}
		if !reflect.DeepEqual(lv.Interface(), want) && !(fd.Kind() == protoreflect.BytesKind && bytes.Equal(lv.Bytes(), pv.Bytes())) {
			t.Fatalf("%s: lite %#v, protobuf-go %#v", path, lv.Interface(), want)
		}
		return
	}
	switch v := lv.Interface().(type) {
	case *lite.Raw:
		got := pv.Message().Type().New().Interface()
		if err := proto.Unmarshal(v.Bytes(), got); err != nil {
			t.Fatalf("%s: raw bytes do not decode: %v", path, err)
		}
		if !proto.Equal(got, pv.Message().Interface()) {
			t.Fatalf("%s: raw bytes hold %v, want %v", path, got, pv.Message().Interface())
		}
	case lite.Message:
		same(t, path, pv.Message(), v)
	case proto.Message:
		if !proto.Equal(v, pv.Message().Interface()) {
			t.Fatalf("%s: lite %v, protobuf-go %v", path, v, pv.Message().Interface())
		}
	default:
		t.Fatalf("%s: lite holds %T", path, v)
	}
}

// TestLiteTypesDecodeAsProtobufGo decodes random messages of every lite
// type, and concatenations of two (which proto merges), with the lite
// types and with go-control-plane's, and compares every field.
func TestLiteTypesDecodeAsProtobufGo(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	f := filler{r: r}
	for _, name := range liteTypes(t) {
		mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 60 {
			a, b := mt.New(), mt.New()
			f.fill(a, 0)
			f.fill(b, 0)
			wireA, err := proto.MarshalOptions{Deterministic: true}.Marshal(a.Interface())
			if err != nil {
				t.Fatal(err)
			}
			wireB, err := proto.Marshal(b.Interface())
			if err != nil {
				t.Fatal(err)
			}
			wire := wireA
			if i%2 == 1 {
				wire = append(append([]byte{}, wireA...), wireB...)
			}
			want := mt.New()
			if err := proto.Unmarshal(wire, want.Interface()); err != nil {
				t.Fatal(err)
			}
			got := registry.New("type.googleapis.com/" + string(name))
			if err := lite.Unmarshal(wire, got); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			same(t, string(name), want, got)
		}
	}
}

// FuzzLiteDecodesAsProtobufGo holds the lite types to protobuf-go on any
// bytes: both refuse them, or both accept them and agree on every field.
func FuzzLiteDecodesAsProtobufGo(f *testing.F) {
	f.Add(uint8(0), []byte{0x0a, 0x01, 'a'})
	f.Add(uint8(3), []byte{0x12, 0x02, 0xff, 0xfe})
	f.Add(uint8(7), []byte{0x08, 0x96, 0x01, 0x0a, 0x00})
	f.Fuzz(func(t *testing.T, which uint8, wire []byte) {
		names := liteTypes(t)
		name := names[int(which)%len(names)]
		mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
		if err != nil {
			t.Fatal(err)
		}
		want := mt.New()
		wantErr := proto.Unmarshal(wire, want.Interface())
		got := registry.New("type.googleapis.com/" + string(name))
		gotErr := lite.Unmarshal(wire, got)
		if gotErr == nil && wantErr != nil && holdsRaw(got) {
			return // the error may lie inside a field lite keeps unread (lite.CheckRaw)
		}
		if (wantErr == nil) != (gotErr == nil) {
			t.Fatalf("%s: lite error %v, protobuf-go error %v", name, gotErr, wantErr)
		}
		if wantErr == nil {
			same(t, string(name), want, got)
		}
	})
}

// holdsRaw reports whether m or a message in it keeps a field as a Raw.
func holdsRaw(m lite.Message) bool {
	found := false
	m.RangeSet(func(f lite.Field) bool {
		for _, v := range f.Messages {
			switch v := v.(type) {
			case *lite.Raw:
				found = true
			case lite.Message:
				found = found || holdsRaw(v)
			}
		}
		return !found
	})
	return found
}

// TestGeneratedTypesAreCurrent regenerates the types into a scratch
// directory and compares them with the ones checked in.
func TestGeneratedTypesAreCurrent(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("go", "run", "./gen", "-out", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run ./gen: %v\n%s", err, out)
	}
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		rel, _ := filepath.Rel(dir, path)
		want, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		got, err := os.ReadFile(rel)
		if err != nil {
			return fmt.Errorf("%s: %w (run go generate ./xdsclient/internal/lite)", rel, err)
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("%s is stale: run go generate ./xdsclient/internal/lite", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Fatalf("the generator wrote %d files", n)
	}
}

// TestLiteEncodingDecodesAsSent encodes random messages of every lite
// type that can be encoded and checks that protobuf-go, decoding them as
// Envoy's own types, reads back what was encoded.
func TestLiteEncodingDecodesAsSent(t *testing.T) {
	f := filler{r: rand.New(rand.NewPCG(3, 4))}
	encoders := 0
	for _, name := range liteTypes(t) {
		if _, ok := registry.New("type.googleapis.com/" + string(name)).(lite.Encoder); !ok {
			continue
		}
		encoders++
		mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
		if err != nil {
			t.Fatal(err)
		}
		for range 200 {
			want := mt.New()
			f.fill(want, 0)
			wire, err := proto.Marshal(want.Interface())
			if err != nil {
				t.Fatal(err)
			}
			m := registry.New("type.googleapis.com/" + string(name))
			if err := lite.Unmarshal(wire, m); err != nil {
				t.Fatal(err)
			}
			out, err := m.(lite.Encoder).AppendTo(nil)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			got := mt.New()
			if err := proto.Unmarshal(out, got.Interface()); err != nil {
				t.Fatalf("%s: protobuf-go cannot decode what lite encoded: %v", name, err)
			}
			if !proto.Equal(got.Interface(), want.Interface()) {
				t.Fatalf("%s: lite encoded\n%v\nwant\n%v", name, got, want)
			}
		}
	}
	if encoders < 4 {
		t.Fatalf("%d lite types can be encoded", encoders)
	}
}

// jsonDecoder is a lite type that reads JSON objects.
type jsonDecoder interface {
	lite.Message
	UnmarshalJSONStruct(*structpb.Struct, int) error
}

// sameJSON is same for a message read from JSON, where a field lite keeps
// as a Raw is only marked set.
func sameJSON(t *testing.T, pm protoreflect.Message, lm lite.Message) {
	t.Helper()
	// Re-encode protobuf-go's message with every Raw-typed field emptied,
	// which is all the JSON path keeps of them.
	var strip func(m protoreflect.Message, l lite.Message)
	strip = func(m protoreflect.Message, l lite.Message) {
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			getter := reflect.ValueOf(l).MethodByName("Get" + goName(t, m.Type(), fd))
			lv := getter.Call(nil)[0]
			each := func(pv protoreflect.Value, lv reflect.Value) {
				switch x := lv.Interface().(type) {
				case *lite.Raw:
					proto.Reset(pv.Message().Interface())
				case lite.Message:
					strip(pv.Message(), x)
				}
			}
			switch {
			case fd.IsMap():
				if fd.MapValue().Message() != nil {
					v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
						each(mv, lv.MapIndex(reflect.ValueOf(k.Interface())))
						return true
					})
				}
			case fd.IsList():
				if fd.Message() != nil {
					for i := range v.List().Len() {
						each(v.List().Get(i), lv.Index(i))
					}
				}
			case fd.Message() != nil:
				each(v, lv)
			}
			return true
		})
	}
	strip(pm, lm)
	same(t, string(pm.Descriptor().FullName()), pm, lm)
}

// TestLiteJSONReadsAsProtojson reads random RBAC filter configs, written
// by protojson as a TypedStruct carries them, with the lite types and with
// protojson into Envoy's own types, and compares them; then it mutates the
// JSON and checks that both accept or both refuse it.
func TestLiteJSONReadsAsProtojson(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	only := map[protoreflect.FullName]bool{}
	for _, n := range liteTypes(t) {
		only[n] = true
	}
	f := filler{r: r, only: only}
	name := protoreflect.FullName("envoy.extensions.filters.http.rbac.v3.RBAC")
	mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
	if err != nil {
		t.Fatal(err)
	}
	compared, refused := 0, 0
	for range 3000 {
		orig := mt.New()
		f.fill(orig, 0)
		js, err := protojson.Marshal(orig.Interface())
		if err != nil {
			continue // an Any of a made-up type
		}
		var tree any
		if err := json.Unmarshal(js, &tree); err != nil {
			t.Fatal(err)
		}
		if r.IntN(2) == 0 {
			mutate(r, tree)
		}
		js, err = json.Marshal(tree)
		if err != nil {
			t.Fatal(err)
		}
		st := &structpb.Struct{}
		if err := st.UnmarshalJSON(js); err != nil {
			continue // not an object any more
		}
		want := mt.New()
		wantErr := protojson.Unmarshal(js, want.Interface())
		got := registry.New("type.googleapis.com/" + string(name)).(jsonDecoder)
		gotErr := got.UnmarshalJSONStruct(st, 0)
		if gotErr == nil && wantErr != nil && holdsRaw(got) {
			t.Fatalf("lite holds a Raw field, which the filler never sets: %s", js)
		}
		if (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("lite error %v, protojson error %v, for %s", gotErr, wantErr, js)
		}
		if wantErr != nil {
			refused++
			continue
		}
		compared++
		sameJSON(t, want, got)
	}
	if compared < 100 || refused < 20 {
		t.Fatalf("compared %d configs and saw %d refused: too few", compared, refused)
	}
	t.Logf("compared %d configs; both refused %d", compared, refused)
}

// mutate changes one random value of a decoded JSON tree in place.
func mutate(r *rand.Rand, tree any) {
	obj, ok := tree.(map[string]any)
	if !ok || len(obj) == 0 {
		return
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	k := keys[r.IntN(len(keys))]
	switch r.IntN(6) {
	case 0:
		obj[k] = "NaN"
	case 1:
		obj[k] = 1.5
	case 2:
		obj[k] = nil
	case 3:
		obj["noSuchField"] = true
	case 4:
		obj[k] = []any{obj[k]}
	default:
		if sub, ok := obj[k].(map[string]any); ok {
			mutate(r, sub)
		} else if list, ok := obj[k].([]any); ok && len(list) > 0 {
			mutate(r, list[0])
		} else {
			obj[k] = "x"
		}
	}
}
