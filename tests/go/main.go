// lkclient: LiveKit's Go SDK (server-sdk-go) as an independent client of the end-to-end tests.
//
//	lkclient publish -url ws://H:P -api-key K -api-secret S -room R -identity I [-fps N] FILE...
//	    publishes each .ogg/.ivf/.h264/.h265 file the way `lk room join --publish` does (NewLocalFileTrack,
//	    the SDK's reader sample provider, unpublish when the file has been written) and prints one JSON line
//	    per event: {"event":"published","file":F,"track_sid":T} and {"event":"written","file":F}.
//	    Exits once every file has been written and unpublished.
//	lkclient egress-start -url http://H:P -api-key K -api-secret S -room R -track T [-filepath F]
//	lkclient egress-start-av -url ... -room R -track VIDEO -audio AUDIO [-filepath F]
//	    (StartEgress, preset PASSTHROUGH: one video track and one audio route to one file)
//	lkclient egress-list  -url ... [-room R] [-id EG]
//	lkclient egress-stop  -url ... -id EG
//	    call livekit.Egress through the SDK's EgressClient and print the EgressInfo (or ListEgressResponse)
//	    as protojson on one line; a Twirp error exits 1 with `twirp <code>: <msg>` on stderr.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/twitchtv/twirp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

type common struct {
	url, key, secret string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.url, "url", "", "LiveKit URL (ws:// for publish, http:// for the egress calls)")
	fs.StringVar(&c.key, "api-key", "", "API key")
	fs.StringVar(&c.secret, "api-secret", "", "API secret")
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: lkclient publish|egress-start|egress-list|egress-stop [flags]")
	}
	var err error
	switch os.Args[1] {
	case "publish":
		err = publish(os.Args[2:])
	case "egress-start", "egress-start-av", "egress-list", "egress-stop":
		err = egressCall(os.Args[1], os.Args[2:])
	default:
		fail("unknown command " + os.Args[1])
	}
	if err != nil {
		if te, ok := err.(twirp.Error); ok {
			fail(fmt.Sprintf("twirp %s: %s", te.Code(), te.Msg()))
		}
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(1)
}

var printMu sync.Mutex

func event(fields map[string]string) {
	printMu.Lock()
	defer printMu.Unlock()
	line, _ := json.Marshal(fields)
	fmt.Println(string(line))
}

func publish(args []string) error {
	fs := flag.NewFlagSet("publish", flag.ExitOnError)
	var c common
	c.register(fs)
	roomName := fs.String("room", "", "room name")
	identity := fs.String("identity", "go-publisher", "participant identity")
	fps := fs.Float64("fps", 0, "video frame rate of .ivf/.h264/.h265 files (as lk's --fps)")
	_ = fs.Parse(args)

	room, err := lksdk.ConnectToRoom(c.url, lksdk.ConnectInfo{
		APIKey: c.key, APISecret: c.secret, RoomName: *roomName, ParticipantIdentity: *identity,
	}, lksdk.NewRoomCallback())
	if err != nil {
		return err
	}
	defer room.Disconnect()

	var wg sync.WaitGroup
	for _, file := range fs.Args() {
		wg.Add(1)
		if err := publishFile(room, file, *fps, wg.Done); err != nil {
			return err
		}
	}
	wg.Wait()
	return nil
}

// publishFile follows `lk room join --publish FILE`: frame duration from --fps for video files, the track named
// after the file, unpublished once the reader has written the whole file.
func publishFile(room *lksdk.Room, file string, fps float64, done func()) error {
	var (
		mu  sync.Mutex
		pub *lksdk.LocalTrackPublication
	)
	opts := []lksdk.ReaderSampleProviderOption{
		lksdk.ReaderTrackWithOnWriteComplete(func() {
			event(map[string]string{"event": "written", "file": file})
			mu.Lock()
			defer mu.Unlock()
			if pub != nil {
				_ = room.LocalParticipant.UnpublishTrack(pub.SID())
			}
			done()
		}),
	}
	switch filepath.Ext(file) {
	case ".h264", ".h265", ".ivf":
		if fps > 0 {
			opts = append(opts, lksdk.ReaderTrackWithFrameDuration(time.Duration(float64(time.Second)/fps)))
		}
	}
	track, err := lksdk.NewLocalFileTrack(file, opts...)
	if err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	pub, err = room.LocalParticipant.PublishTrack(track, &lksdk.TrackPublicationOptions{Name: filepath.Base(file)})
	if err != nil {
		return err
	}
	event(map[string]string{"event": "published", "file": file, "track_sid": pub.SID()})
	return nil
}

func egressCall(cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	var c common
	c.register(fs)
	roomName := fs.String("room", "", "room name")
	trackID := fs.String("track", "", "track sid (egress-start; the video track of egress-start-av)")
	audioID := fs.String("audio", "", "audio track sid (egress-start-av)")
	filePath := fs.String("filepath", "", "file output path (egress-start)")
	egressID := fs.String("id", "", "egress id (egress-list, egress-stop)")
	_ = fs.Parse(args)

	client := lksdk.NewEgressClient(c.url, c.key, c.secret)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var (
		res proto.Message
		err error
	)
	switch cmd {
	case "egress-start":
		res, err = client.StartTrackEgress(ctx, &livekit.TrackEgressRequest{
			RoomName: *roomName, TrackId: *trackID,
			Output: &livekit.TrackEgressRequest_File{File: &livekit.DirectFileOutput{Filepath: *filePath}},
		})
	case "egress-start-av":
		res, err = client.StartEgress(ctx, &livekit.StartEgressRequest{
			RoomName: *roomName,
			Source: &livekit.StartEgressRequest_Media{Media: &livekit.MediaSource{
				Video: &livekit.MediaSource_VideoTrackId{VideoTrackId: *trackID},
				Audio: &livekit.AudioConfig{Routes: []*livekit.AudioRoute{
					{Match: &livekit.AudioRoute_TrackId{TrackId: *audioID}},
				}},
			}},
			Encoding: &livekit.StartEgressRequest_Preset{Preset: livekit.EncodingOptionsPreset_PASSTHROUGH},
			Outputs:  []*livekit.Output{{Config: &livekit.Output_File{File: &livekit.FileOutput{Filepath: *filePath}}}},
		})
	case "egress-list":
		res, err = client.ListEgress(ctx, &livekit.ListEgressRequest{RoomName: *roomName, EgressId: *egressID})
	case "egress-stop":
		res, err = client.StopEgress(ctx, &livekit.StopEgressRequest{EgressId: *egressID})
	}
	if err != nil {
		return err
	}
	out, err := protojson.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}
